"""Where a checkpoint lives. The resolver itself is `dinov3kit.source` (below configs and weights, so
that both can use it); these are the names `models` imports from here."""

from ..source import HubOptions, Source, resolve_source

__all__ = ["HubOptions", "Source", "resolve_source"]
