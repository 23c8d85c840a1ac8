"""Bipartite matching of queries to targets."""
