"""A module that ends the process while it is imported (the harness must not exit 0)."""

import sys


def hsa(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    return v


sys.exit(0)
