"""``entrgi``: reward-guided sampling of masked diffusion language models, from the command line.

usage: entrgi <command> [options]        entrgi <command> --help: that command's options

commands:
  predict    guided sampling of a prompt file: Top@1 and K responses per prompt, resumable
             (entrgi predict --config configs/tiny.yaml; any option overrides the YAML)
  fit        train the diffusion LM on its own guided rollouts, with a collapse guard
             (entrgi fit --config configs/fit_tiny.yaml [--ckpt_path last])
  compare    reward against compute, every method against Best-of-N at matched compute, read by
             the guiding reward and by each judge (entrgi compare --config configs/real.yaml)
  diagnose   which gate the reward model rewards: soft inputs against hard tokens, by entropy
             (entrgi diagnose --config configs/tiny.yaml)
  serve      an OpenAI-compatible HTTP server (completions, chat) doing guided sampling, on LitServe
             (entrgi serve --config configs/tiny.yaml --port 8000; loopback by default)
  eval       an lm-evaluation-harness run of a configuration: guided generation, ELBO likelihoods
             (entrgi eval --config configs/tiny.yaml --tasks tinyworld_reviews)

A configuration names the diffusion LM (dlm), the reward model (reward), the strategy (guidance),
the sampler (sampling), the prompts (data), the judges and Lightning's trainer; see
docs/cli.md. Bad input ends with one line on stderr and exit status 2 (ENTRGI_DEBUG=1 shows the
traceback). Every command keeps freed large buffers in the heap for reuse (entrgi_core.allocator;
ENTRGI_KEEP_FREED_MEMORY=0 turns that off).
"""
from __future__ import annotations

import importlib
import os
import sys

# command -> (module, function): imported only when that command runs, so `entrgi --help` is cheap
COMMANDS = {
    "predict": ("entrgi_core.lightning_cli", "predict"),
    "fit": ("entrgi_core.lightning_cli", "fit"),
    "compare": ("entrgi_core.tools.compare", "main"),
    "diagnose": ("entrgi_core.tools.diagnose", "main"),
    "serve": ("entrgi_core.tools.serve", "main"),
    "eval": ("entrgi_core.tools.evaluate", "main"),
}
PASS_COMMAND = {"predict", "fit"}            # LightningCLI reads its subcommand from the arguments


def main(args: list[str] | None = None) -> None:
    """Console entry point (see the module docstring). Bad input (``InputError``, a missing file,
    a configuration jsonargparse refuses) ends with one line on stderr and exit status 2; anything
    else, a bug or an out-of-memory error, raises with its traceback."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(__doc__.strip())
        except BrokenPipeError:                  # `entrgi --help | head`
            sys.stdout = None
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from entrgi_core import __version__

        print(f"entrgi {__version__}")
        return
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"entrgi: error: unknown command {argv[0]!r}.{hint} The commands are: {', '.join(COMMANDS)} "
              "(entrgi --help says what each does)", file=sys.stderr)
        sys.exit(2)
    from entrgi_core.allocator import keep_freed_memory

    try:
        keep_freed_memory()                      # reuse freed N x V buffers (ENTRGI_KEEP_FREED_MEMORY=0: off)
    except ValueError as exc:
        print(f"entrgi: error: {exc}", file=sys.stderr)
        sys.exit(2)
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")   # we pass sys.argv on, by design
    from entrgi_core.errors import InputError

    module, function = COMMANDS[argv[0]]
    try:
        run = getattr(importlib.import_module(module), function)
        run(argv if argv[0] in PASS_COMMAND else argv[1:])
    except (InputError, FileNotFoundError, ValueError) as exc:
        cause = user_error(exc)
        if cause is None or os.environ.get("ENTRGI_DEBUG") == "1":
            raise
        from entrgi_core.lightning_cli import condense

        print(f"entrgi: error: {condense(str(cause))}", file=sys.stderr)
        sys.exit(2)


def user_error(exc: BaseException) -> BaseException | None:
    """The ``InputError`` or missing file behind ``exc`` (jsonargparse wraps a constructor's error in
    a ValueError of its own), or None for any other error."""
    from entrgi_core.errors import InputError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (InputError, FileNotFoundError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
