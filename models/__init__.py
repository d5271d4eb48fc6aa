"""Score models (docs/model.md): models/ddpm.py is the DDPM U-Net; models/utils.py builds models, reads and
writes checkpoints and wraps model + EMA as an eps function."""
