"""Hooks that put Adrenaline's flags into SGLang's parser and its server-args record.

Both are AROUND hooks on `sglang.srt.server_args.ServerArgs` (registered by `plugin.load`). SGLang's
launchers call `load_plugins()` before `prepare_server_args`, so the flags exist when argv is parsed.
"""

from __future__ import annotations

from adrenaline_sgl.sglang_ext import flags

ADD_CLI_ARGS = "sglang.srt.server_args.ServerArgs.add_cli_args"
FROM_CLI_ARGS = "sglang.srt.server_args.ServerArgs.from_cli_args"


def add_cli_args_hook(original, parser):
    """Changes: SGLang's server parser also gets the `--adrenaline-*` group (with help strings).
    Why: the offload role, transport, executor address and policy are per-instance launch settings."""
    original(parser)
    flags.add_cli_args(parser)


def from_cli_args_hook(original, cls, args):
    """Changes: the ServerArgs record also carries `_adrenaline` (an `AdrenalineArgs`).
    Why: ServerArgs is a closed msgspec Struct that drops unknown flags; an underscore attribute is allowed
    bookkeeping that `ServerArgs.__reduce__` pickles into the scheduler subprocesses."""
    record = original(cls, args)
    setattr(record, flags.ATTR_NAME, flags.from_namespace(args))
    return record
