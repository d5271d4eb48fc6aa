"""Score models (docs/model.md). Importing the package registers the DDPM U-Net."""
from models import ddpm  # noqa: F401  (registers 'ddpm' in models.utils)
