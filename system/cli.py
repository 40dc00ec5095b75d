"""`expert-router` console script: a click group whose subcommands are imported only when used."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute". Lazy, so `expert-router sim` does not pay for sklearn or pandas imports.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("system.engines.sim.cli:sim", "Run the continuous-batching vLLM simulator (OpenAI API)."),
    "classifier": ("system.classifier.cli:classifier", "Train, evaluate and query the prompt classifier."),
    "gateway": ("system.gateway.cli:gateway", "Run the routing gateway (OpenAI API)."),
    "stack": ("system.runner.cli:stack", "Bring a routed or single-model stack up in the foreground."),
    "experiment": ("system.runner.cli:experiment", "Run an experiment sweep from a YAML file."),
    "report": ("analysis.cli:report", "Write the HTML + Markdown report of a run directory."),
    "compare": ("analysis.cli:compare", "A/B comparison of two runs with 95 % confidence intervals."),
    "bench": ("system.bench.cli:bench", "Benchmarks: sim, classifier, accuracy, gateway, soak."),
    "calibrate": ("system.calibration.calibrate:calibrate", "Fit a sim profile to measured engine runs."),
    "demo": ("system.demo:demo", "Quickstart: routed vs single on the simulator, then the report."),
    "loadgen": ("system.runner.remote_worker:loadgen", "Locust workers on other hosts for --remote-workers."),
}


class LazyGroup(click.Group):
    """click group that imports a subcommand's module on first use (click docs' lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[cmd_name]
        mod_name, attr = target.split(":")
        mod = importlib.import_module(mod_name)
        cmd = getattr(mod, attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{target} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # help text without importing every module
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="expert-router")
def main() -> None:
    """Expert Router harness: routed vs single-model LLM inference, measured."""


if __name__ == "__main__":
    main()
