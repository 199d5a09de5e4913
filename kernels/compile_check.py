"""Deprecated location: the compile check is ``python -m kernels.tools.compile_check``; this name still runs it."""

if __name__ == "__main__":
    from kernels.tools.compile_check import main

    raise SystemExit(main())
