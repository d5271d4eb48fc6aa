"""Experiment drivers that run trained models, write files and plot: the Table-1 outputs (``tables``), the
symmetry-breaking analyses of the SSB paper (``ssb``) and the memorization / reproducibility / Jacobian studies of
the GEN papers (``gen``). The maths they use lives in ``analysis/``."""
