"""Exceptions raised by the policy package.

The tree is small on purpose::

    PolicyError                 anything this package raises on purpose
    ├── PolicyConfigError       a config file, binding or policy option is invalid: fix the config
    └── ReplayInputError        a metrics line fed to ``replay`` is malformed: fix the input file

``PolicyConfigError`` and ``ReplayInputError`` are also ``ValueError`` so that callers that
already catch ``ValueError`` for bad input keep working.
"""

from __future__ import annotations

__all__ = ["PolicyConfigError", "PolicyError", "ReplayInputError"]


class PolicyError(Exception):
    """Base class of the errors this package raises on purpose."""


class PolicyConfigError(PolicyError, ValueError):
    """A policy configuration is invalid.

    The message names where (file, ``[[policy]]`` index or id), which key, and why, e.g.
    ``policies.toml: [[policy]] #2 (id 'lr-plateau'): plateau: factor must be < 1.0 but got 1.5``.
    Nothing was started: fix the configuration and load it again.
    """


class ReplayInputError(PolicyError, ValueError):
    """A metrics line given to :func:`policies.replay` / :func:`policies.read_jsonl` is malformed.

    The message names the file (when known), the line number and what is wrong with it.
    """
