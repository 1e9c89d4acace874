"""Schemathesis hooks for csgate's conformance run (.ci/conformance.sh).

One rule of the Query Services parameters cannot be written in JSON Schema: a `*_from`
bound must not be later than its `*_to` bound (csgate answers 400 InvalidParameter,
pinned by unit tests in src/query/params.rs). Generated queries that break it are
repaired by swapping the two bounds, so `positive_data_acceptance` holds the remaining
rules to account instead of tripping over this one.
"""

import re
from datetime import date

import schemathesis

_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?$"
)


def _instant(text):
    """The instant csgate compares, in UTC milliseconds (truncated), or None."""
    if not isinstance(text, str):
        return None
    m = _DATE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    millis = int((m.group(7) or "").ljust(3, "0")[:3])
    # The Gregorian calendar repeats every 400 years (146097 days), which makes years
    # 0000-9999 countable with Python's date (years 1-9999).
    cycles, year_in_cycle = divmod(year, 400)
    try:
        days = date(year_in_cycle + 400, month, day).toordinal() + (cycles - 1) * 146097
    except ValueError:
        return None
    offset_minutes = 0
    if m.group(9):
        sign = 1 if m.group(9) == "+" else -1
        offset_minutes = sign * (int(m.group(10)) * 60 + int(m.group(11)))
    minutes = (days * 24 + hour) * 60 + minute - offset_minutes
    return (minutes * 60 + second) * 1000 + millis


def _order_windows(query):
    for low, high in (("started_from", "started_to"), ("completed_from", "completed_to")):
        a, b = _instant(query.get(low)), _instant(query.get(high))
        if a is not None and b is not None and a > b:
            query[low], query[high] = query[high], query[low]


# Path keys are limited in UTF-8 bytes (256, `[server] max_key_bytes`), which JSON Schema
# cannot count: `maxLength` counts characters. A key within 256 characters but over 256
# bytes is cut to the last character that fits; longer keys (the schema's own negative
# cases) are left alone.
_MAX_KEY_BYTES = 256


def _fit_keys(path_parameters):
    for name in ("contact_key", "customer_id"):
        value = path_parameters.get(name)
        if isinstance(value, str) and len(value) <= _MAX_KEY_BYTES:
            while len(value.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
                value = value[:-1]
            path_parameters[name] = value


# A query string carries text: an extension filter's value is a string, which csgate
# reads as a JSON literal when it is one. An object or array value has no form
# serialization that GMS or csgate reads (schemathesis writes `key[a][b]=...`, which is
# simply another filter key), so such generated cases are dropped.
_ARRAY_PARAMETERS = {"service_types"}


def _serializable(query):
    for key, value in query.items():
        if key in _ARRAY_PARAMETERS:
            continue
        values = value.values() if key == "filters" and isinstance(value, dict) else [value]
        if any(isinstance(v, (dict, list)) for v in values):
            return False
    return True


# Applied to the cases of every phase (examples, coverage, fuzzing, stateful).
@schemathesis.hook
def filter_case(ctx, case):
    return not isinstance(case.query, dict) or _serializable(case.query)


@schemathesis.hook
def map_case(ctx, case):
    if isinstance(case.query, dict):
        _order_windows(case.query)
    if isinstance(case.path_parameters, dict):
        _fit_keys(case.path_parameters)
    return case
