"""matplotlib as escnet draws with it: off-screen (Agg), and user text drawn literally.

Class names, file names and labels are the user's: matplotlib would read a ``$`` in one as the
start of mathematical text (``$ 5 bill`` becomes an error, ``$x$`` a formula). Every figure
escnet draws gets pyplot from :func:`pyplot`, the one place that settles both.
"""

from __future__ import annotations

from types import ModuleType

from escnet.errors import EscnetError


def pyplot(what: str = "drawing figures") -> ModuleType:
    """``matplotlib.pyplot``, set up headless with ``text.parse_math`` off; an
    :class:`EscnetError` saying ``what`` needs it when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise EscnetError(f"{what} needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # no display needed; must precede pyplot
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
