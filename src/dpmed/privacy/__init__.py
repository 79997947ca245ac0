"""Privacy mechanisms, the guarantees they give, and free post-processing of releases.

Importing this package registers every input mechanism (laplace, gaussian, dppix,
weighted-laplace).
"""

from dpmed.privacy.dppix import DPPix
from dpmed.privacy.gaussian import Gaussian
from dpmed.privacy.guarantee import UNITS, PrivacyGuarantee, Unit
from dpmed.privacy.laplace import Laplace
from dpmed.privacy.mechanism import MECHANISMS, InputMechanism, build_mechanism, released_split
from dpmed.privacy.weighted_laplace import WeightedLaplace

__all__ = [
    "MECHANISMS",
    "UNITS",
    "DPPix",
    "Gaussian",
    "InputMechanism",
    "Laplace",
    "PrivacyGuarantee",
    "Unit",
    "WeightedLaplace",
    "build_mechanism",
    "released_split",
]
