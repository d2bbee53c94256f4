"""Name -> class registries with Dassl's API (``register``, ``get``, ``registered_names``)."""
import difflib


class Registry:
    """Maps ``obj.__name__`` to the object.

    Registering the same object twice is harmless (a module imported under two names, or
    re-imported in a test); a *different* object under a taken name is an error unless ``force``.
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        existing = self._obj_map.get(name)
        if existing is not None and not force and not _same_definition(existing, obj):
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry '
                f"(by {existing.__module__}); rename the new one or pass force=True"
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def deco(func_or_class):
                self._do_register(func_or_class.__name__, func_or_class, force=force)
                return func_or_class
            return deco
        self._do_register(obj.__name__, obj, force=force)

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError(unknown_name_message(self._name, name, self.registered_names()))
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def __len__(self):
        return len(self._obj_map)


def _same_definition(a, b):
    """True for the same class, or the same class re-created by re-importing its module."""
    return a is b or (
        getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def close_matches(name, choices, n=3):
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def unknown_name_message(kind, name, choices):
    msg = f'Unknown {kind.lower()} "{name}".'
    suggestions = close_matches(name, choices)
    if suggestions:
        msg += " Did you mean: " + ", ".join(suggestions) + "?"
    msg += " Available: " + ", ".join(sorted(choices))
    return msg
