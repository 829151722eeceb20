"""SGLang plugin entry point (`sglang.srt.plugins` group, see pyproject.toml).

SGLang calls `load()` in every process it starts (launcher, scheduler, detokenizer). It must stay cheap
and must not import CUDA-only modules.

`load()` registers every Adrenaline hook with SGLang's `HookRegistry`; `load_plugins()` applies them right
after. Every hook is inert unless the instance was started with `--adrenaline-role prefill|decode` and the
request is marked offloaded, so stock PD serving through this plugin is stock SGLang. The table of hooks,
with what each changes and why, is `hook_table()`; docs/sglang.md repeats it for operators.
"""

import os

SUPPORTED_SGLANG_VERSION = "0.5.23"


class UnsupportedSGLangVersion(SystemExit):
    """Raised by `load()` on another sglang version.

    NOTE: a SystemExit on purpose: `sglang.srt.plugins.load_plugins` catches `Exception` from a plugin, logs
    it and starts the server anyway; the hooks target 0.5.23 internals, so start-up must stop instead.
    """


def hook_table() -> list[tuple[str, object, object]]:
    """(target, hook, HookType) for every hook; imports only our light hook modules and sglang's registry."""
    import multiprocessing

    from sglang.srt.plugins.hook_registry import HookType

    from adrenaline_sgl.sglang_ext import (
        args_hooks,
        decode_hooks,
        decode_stats,
        dist_store,
        emulate_hooks,
        load_endpoint,
        prefill_hooks,
    )

    table = [
        (args_hooks.ADD_CLI_ARGS, args_hooks.add_cli_args_hook, HookType.AROUND),
        (args_hooks.FROM_CLI_ARGS, args_hooks.from_cli_args_hook, HookType.AROUND),
        *prefill_hooks.hooks(HookType),
        *decode_hooks.hooks(HookType),
        *decode_stats.hooks(HookType),  # the scheduler's side of the decode load report
        *dist_store.hooks(HookType),  # torch.distributed's store on the configured host only
        *emulate_hooks.hooks(HookType),  # emulated-GPU mode, only with $ADRENALINE_EMULATE (docs/emulator.md)
    ]
    if multiprocessing.parent_process() is None:  # the launcher: the only process that runs the HTTP server
        table.append((load_endpoint.LAUNCH_SERVER, load_endpoint.launch_server_hook, HookType.AROUND))
    return table


def register_hooks() -> None:
    """Register `hook_table()` with SGLang's HookRegistry (applied by `load_plugins()` right after), and the
    `adrenaline` attention backend with SGLang's attention registry (see `backend.register`)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    from adrenaline_sgl.sglang_ext import backend

    for target, hook, hook_type in hook_table():
        HookRegistry.register(target, hook, hook_type)
    backend.register()


def load() -> None:
    """Check the SGLang version, then apply what this process needs."""
    from importlib.metadata import version

    found = version("sglang")
    if found != SUPPORTED_SGLANG_VERSION:
        raise UnsupportedSGLangVersion(
            f"adrenaline_sgl supports sglang=={SUPPORTED_SGLANG_VERSION} only, found sglang=={found}; "
            f"install the pinned version (pip install -c .ci/constraints.txt sglang=={SUPPORTED_SGLANG_VERSION})"
        )
    # Development/test support for real servers on CPU machines (docs/sglang.md); off unless asked for.
    if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1":
        from adrenaline_sgl.sglang_ext.cpu import fixes

        fixes.apply()
    register_hooks()
