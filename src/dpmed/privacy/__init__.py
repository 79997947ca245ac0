"""Privacy mechanisms and the guarantees they give."""

from dpmed.privacy.guarantee import PrivacyGuarantee
from dpmed.privacy.laplace import laplace_guarantee, release_laplace

__all__ = ["PrivacyGuarantee", "laplace_guarantee", "release_laplace"]
