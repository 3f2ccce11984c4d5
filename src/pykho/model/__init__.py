"""The two-kernel KHO model (see docs/ARCHITECTURE.md)."""


def run_cycle(*args, **kw):
    """A whole kexec cycle at host scale (:func:`pykho.model.cycle.run_cycle`)."""
    from .cycle import run_cycle as _rc
    return _rc(*args, **kw)
