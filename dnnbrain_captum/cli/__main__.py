"""``python -m dnnbrain_captum.cli``: the ``dnnbrain-captum`` command."""

from dnnbrain_captum.cli import main

if __name__ == "__main__":  # pragma: no cover - python -m dnnbrain_captum.cli
    raise SystemExit(main())
