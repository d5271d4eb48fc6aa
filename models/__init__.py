"""Score models (SPEC section 3). Importing the package registers the DDPM U-Net."""
from models import ddpm  # noqa: F401  (registers 'ddpm' in models.utils)
