"""Analyses of trained weights (planes, lines, rays, FGE) for the paper's figures."""
