"""ddpm_tutor: denoising diffusion probabilistic models, exactly, for the ddpm-tutor book.

Time indices: an integer t in 0..T-1 stands for the paper's step t+1 (see ddpm_tutor.schedules).
"""

from .schedules import Schedule  # noqa: F401

__version__ = "0.1.0"

# The book's one public home: _config.yml, the Colab install cells and the launch buttons use it.
HOME_URL = "https://github.com/ddpm-tutor/ddpm-tutor"
PIP_SPEC = f"ddpm-tutor @ git+{HOME_URL}"
