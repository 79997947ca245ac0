"""What an attacker can recover from a release: reconstruction (and later membership)."""

from dpmed.audit.reconstruction import reconstruction_attack

__all__ = ["reconstruction_attack"]
