"""Every random draw that protects privacy comes from here, and from nothing published.

Input noise, DP-SGD's gradient noise and Poisson batches, table noise and diffprivlib's
draws are *secret* randomness: whoever can regenerate them can subtract the noise, so the
public `--seed` (written to config.yaml, summary.json, results.db) never drives them. It
drives splits, initialisation and augmentation only.

By default each draw is seeded from the operating system's entropy (`secrets`): nobody,
the user included, can reproduce it. A reproducible benchmark names a secret *noise key*
(`--noise-key FILE`, or $DPMED_NOISE_KEY_FILE naming the file): each draw is then seeded
by HMAC-SHA256(key, the draw's full identity), so the same key and the same identity give
the same noise, and any two different identities (another epsilon, image size, split,
set of images, technique setting or seed) give independent noise. The key is never
written anywhere; results carry only `key_id`, a keyed fingerprint that tells which key
was used without revealing it.

Names of cached releases carry `cache_tag(identity)`, an HMAC of the identity under a
random secret kept in the cache folder (which also holds the decoded private images), so
a file name says nothing about the private images it was drawn from.

numpy draws use PCG64 seeded with 256 bits. torch's CPU generator (MT19937) keeps only the
low 32 bits of a `manual_seed`, a search anyone can run, so its whole 19,937-bit state is
set from the 256 secret bits instead; a CUDA generator (Philox) takes a full 64-bit seed.

>>> a, b = numpy_generator({"draw": "demo"}), numpy_generator({"draw": "demo"})
>>> bool(a.random() != b.random())  # no key: fresh operating-system entropy each time
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpmed.errors import ConfigError

KEY_ENV = "DPMED_NOISE_KEY_FILE"
MIN_KEY_BYTES = 16


def use_key_file(path: str | os.PathLike | None) -> None:
    """Make `path` the noise key of this process and of the workers it starts (through
    the environment), once the file is checked; None leaves the environment's choice."""
    if path is None:
        return
    resolved = str(Path(path).expanduser().resolve())
    _read_key(resolved)
    os.environ[KEY_ENV] = resolved


def load_key() -> bytes | None:
    """The secret noise key named by $DPMED_NOISE_KEY_FILE, or None (operating-system
    entropy)."""
    named = os.environ.get(KEY_ENV)
    return _read_key(named) if named else None


def _read_key(path: str) -> bytes:
    """A key file holds at least 16 random bytes, e.g. `head -c 32 /dev/urandom`."""
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the noise key file {path} ({exc.strerror}); create one with "
            f"`head -c 32 /dev/urandom > noise.key` or unset {KEY_ENV}"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the noise key file {path} holds {len(key)} bytes; a key needs at least "
            f"{MIN_KEY_BYTES} random bytes: `head -c 32 /dev/urandom > {path}`"
        )
    return key


def noise_source() -> dict[str, Any]:
    """What a result says about its noise: who could regenerate it."""
    key = load_key()
    if key is None:
        return {
            "noise_source": "operating-system entropy",
            "key_id": None,
            "noise_reproducible": "by nobody: the noise was drawn from operating-system entropy",
        }
    return {
        "noise_source": "secret noise key",
        "key_id": key_id(key),
        "noise_reproducible": "by whoever holds the noise key (never written to any output)",
    }


def key_id(key: bytes) -> str:
    """A fingerprint of the key that says nothing about it (an HMAC of a constant)."""
    return hmac.new(key, b"dpmed noise key id", hashlib.sha256).hexdigest()[:12]


def noise_seed(identity: Mapping[str, Any]) -> int:
    """256 secret bits for the draw named by `identity`: HMAC(key, identity) with a key,
    else operating-system entropy (then `identity` is not even read)."""
    key = load_key()
    if key is None:
        return secrets.randbits(256)
    return int.from_bytes(hmac.new(key, canonical(identity), hashlib.sha256).digest(), "big")


def numpy_generator(identity: Mapping[str, Any]) -> np.random.Generator:
    """A PCG64 generator for one release's noise."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(noise_seed(identity))))


# torch's CPU generator state (CPUGeneratorImplState): the seed (uint64), left and seeded
# (int32 each), next (uint64), then MT19937's 624 words, each stored as a uint64.
_MT_WORDS, _MT_OFFSET = 624, 24


def torch_generator(identity: Mapping[str, Any], device: Any = "cpu") -> Any:
    """A torch generator on `device` (DP-SGD's noise, Poisson batches) drawn from the
    256 secret bits: on CPU its whole MT19937 state, on CUDA a 64-bit seed."""
    import torch

    seed = noise_seed(identity)
    generator = torch.Generator(device=device)
    if generator.device.type != "cpu":
        return generator.manual_seed(seed % 2**64)
    words = np.random.SeedSequence(seed).generate_state(_MT_WORDS, np.uint32).astype(np.uint64)
    words[0] |= 0x80000000  # MT19937 reads only mt[0]'s top bit: never an all-zero state
    state = generator.manual_seed(0).get_state().numpy().copy()  # a fresh state: left = 1
    state[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    return generator.set_state(torch.from_numpy(state))


def random_state(identity: Mapping[str, Any]) -> np.random.RandomState | None:
    """diffprivlib's `random_state`: a RandomState from the key, else None, with which
    diffprivlib's mechanisms draw from `secrets.SystemRandom` (operating-system entropy)."""
    if load_key() is None:
        return None
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(noise_seed(identity))))


def forget_states(model: Any) -> None:
    """Reseed, in place and from operating-system entropy, every keyed RandomState the
    steps of a fitted pipeline hold, so that a saved model keeps no trace of its secret
    noise: MT19937 can be run backwards from its state to the draws it made."""
    for step in getattr(model, "steps", []):
        state = getattr(step[1], "random_state", None)
        if isinstance(state, np.random.RandomState):
            state.seed()


def cache_tag(identity: Mapping[str, Any]) -> str:
    """A file-name tag for the release named by `identity` and drawn from this noise
    source: an HMAC under the cache's own secret, so it reveals nothing about the images."""
    key = load_key()
    source = key_id(key) if key else "os-entropy"
    message = canonical(identity) + f"|{source}".encode()
    return hmac.new(_cache_secret(), message, hashlib.sha256).hexdigest()[:16]


def _cache_secret() -> bytes:
    from dpmed.data.images import atomic_write
    from dpmed.data.root import cache_dir

    path = cache_dir() / "cache-secret"
    if not path.exists():
        atomic_write(path, lambda handle: handle.write(secrets.token_bytes(32)))
        path.chmod(0o600)
    return path.read_bytes()


def canonical(identity: Mapping[str, Any]) -> bytes:
    """The identity as bytes: JSON with sorted keys, arrays by their sha256 and shape.

    >>> canonical({"b": 1, "a": np.zeros(2, np.uint8)})[:30]
    b'{"a": "array uint8 (2,) 96a296'
    """

    def encode(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value)
            digest = hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest()
            return f"array {data.dtype} {data.shape} {digest}"
        if isinstance(value, Mapping):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [encode(v) for v in value]
        if isinstance(value, float | int | str | bool) or value is None:
            return value
        return repr(value)

    return json.dumps(encode(identity), sort_keys=True).encode()
