"""Where :func:`online_scale`'s pre-versioning key state was pickled from (read, never written).

The transforms now live in :mod:`.scaling`, :mod:`.encoding` and
:mod:`.hashing`. Recovery stores written before versioned snapshots hold a
pickled ``streamml.operators.featurize.transforms._Moments``; unpickling
needs the class at this path, so this module keeps the name.
"""

from __future__ import annotations

from streamml.operators.featurize.scaling import _Moments

__all__ = ["_Moments"]
