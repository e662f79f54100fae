"""Error types a user is meant to read: each names the file, record or config key and the fix."""


class SegladderError(Exception):
    """Base class for errors that the CLI prints as one clear message instead of a traceback."""


class DataError(SegladderError):
    """A data file, record or split is missing, malformed or inconsistent."""


class BadDatasetError(DataError):
    """One or more records failed validation; `problems` holds `(record_id, reason)` pairs."""

    def __init__(self, problems: list[tuple[str, str]], where: str, hint: str = ""):
        self.problems = list(problems)
        lines = [f"{rid}: {reason}" for rid, reason in self.problems[:20]]
        more = len(self.problems) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        msg = f"{len(self.problems)} bad record(s) in {where}:\n  " + "\n  ".join(lines)
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


class CacheError(DataError):
    """A prepared cache is missing, incomplete, corrupted or made with other options than asked for."""


class ConfigError(SegladderError):
    """A config key or value is invalid."""
