"""agentlightning's own `agl` subcommands, handed on so that installing agl takes none away."""

from __future__ import annotations

import importlib.util

from agl_cli.cli.errors import ExitCode, fail

AGENTLIGHTNING_COMMANDS = {
    "vllm": "Run agentlightning's vLLM wrapper.",
    "store": "Run agentlightning's LightningStore server.",
    "prometheus": "Run agentlightning's Prometheus metrics server.",
    "agentops": "Run agentlightning's AgentOps server manager.",
}


def forward(command: str, args: list[str]) -> int:
    """Run `agl <command> <args>` of agentlightning and return its exit status."""
    if importlib.util.find_spec("agentlightning") is None:
        fail(
            f"'agl {command}' is a command of agentlightning, which is not installed "
            "(pip install agentlightning).",
            ExitCode.ERROR,
        )
    from agentlightning.cli import main as agentlightning_main  # type: ignore[import-not-found]

    try:
        status = agentlightning_main([command, *args])
    except SystemExit as exit_:
        status = exit_.code
    except ModuleNotFoundError as exc:  # an optional dependency of that agentlightning command
        fail(f"'agl {command}' needs the Python module '{exc.name}', which is not installed.")
    if status is None:
        return 0
    return status if isinstance(status, int) else 1
