"""Stochastic Weight Averaging reproduction (Izmailov et al., UAI 2018)."""
