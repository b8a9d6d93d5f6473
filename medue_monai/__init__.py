"""medue-monai: unlearnable medical image datasets as a MONAI plugin.

Protectors (SALM, UMed and the baselines) learn small, bounded perturbations on a clean
training set; MONAI transforms apply them; writers release the protected copy in the
source format; the evaluation side trains unauthorized "exploiter" models on the released
copy and measures how much they still learn.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
