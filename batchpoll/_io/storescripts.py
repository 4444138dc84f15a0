"""The Lua scripts of the shared budget, and the one place their replies are read.

Everything a script reads from the store is checked inside the script, and everything a reply
carries is checked here, so no value in Redis, however it got there, can raise anything but
``Unusable`` (or Redis' own errors) in ``ratestore``.

Keys (``{key}`` is ``--rate-key``; the braces are a Redis Cluster hash tag, so all three live
in one slot and one script may touch them all):

    {key}:tat    GCRA theoretical arrival time of the next request, server-time microseconds
    {key}:pause  deadline of the shared 429 pause, server-time microseconds
    {key}:rate   the --rate (requests/s, as text) of the process that booked last

Each expires by itself about a second after it stops mattering.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

#: The largest time in microseconds a reply may carry: Lua numbers are doubles, exact below 2^53.
MAX_US: Final = 2**53


class Unusable(Exception):
    """The store answered, but with a value batchpoll did not write; the text says where."""


def keys_of(key: str) -> tuple[str, str, str]:
    """The tat, pause and rate keys of the budget named *key*, all in one cluster slot."""
    # Redis hashes only what lies between the first "{" and the next "}": the same prefix
    # for all three, whatever braces *key* itself holds.
    return f"{{{key}}}:tat", f"{{{key}}}:pause", f"{{{key}}}:rate"


def sha(script: str) -> str:
    """What SCRIPT LOAD answers for *script*, so EVALSHA can be tried before any load."""
    return hashlib.sha1(script.encode()).hexdigest()


# Lua 5.1 numbers are doubles: microseconds since 1970 (~1.8e15) are exact below 2^53 (~9e15).
# Values are written with %.0f, since Redis would turn a bare number into a string its own way,
# possibly in exponent form. A stored time we did not write in that form (text, a float, a
# negative, a hash) is refused with an error naming its key, before anything is written.
_PRELUDE: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function ttl_of(value)
  -- Kept 1 s past the moment it stops mattering, then gone.
  return string.format('%.0f', math.ceil((math.max(value, now) - now) / 1000) + 1000)
end
local function put(key, value)
  redis.call('SET', key, string.format('%.0f', value), 'PX', ttl_of(value))
end
local function read(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then
    return nil, redis.error_reply('BATCHPOLL ' .. key .. ' cannot be read: ' .. raw.err)
  end
  return raw or '', nil
end
local function stored_time(key)
  local raw, bad = read(key)
  if bad then return nil, bad end
  if raw == '' then return 0, nil end
  if #raw > 16 or not string.match(raw, '^%d+$') then
    return nil, redis.error_reply(
      'BATCHPOLL ' .. key .. ' holds a value batchpoll did not write (not whole microseconds)')
  end
  return tonumber(raw), nil
end
-- Every key of the budget, each checked: the stored tat and pause, and the rate last declared.
local function stored_all(keys)
  local tat, bad = stored_time(keys[1])
  if bad then return nil, nil, nil, bad end
  local pause, bad_pause = stored_time(keys[2])
  if bad_pause then return nil, nil, nil, bad_pause end
  local other, bad_rate = read(keys[3])
  if bad_rate then return nil, nil, nil, bad_rate end
  return tat, pause, other, nil
end
-- A pause deadline at most `longest` from now, and how far a later one was brought back.
local function bounded(pause, longest)
  if pause > now + longest then return now + longest, pause - now - longest end
  return pause, 0
end
"""

# KEYS: tat, pause, rate. ARGV: interval (us per request), tolerance ((burst - 1) intervals,
# us), the latest tat and pause deadline this caller has seen (us, 0 for none), the most a grant
# may be booked past its start (us), the longest pause (us), the caller's --rate (text).
# Returns {wait, tat, pause, now, cut, rate}: wait in us from now; tat, pause and now in
# server-time us; cut, how far (us) a time beyond the bounds was moved back (0 if none);
# rate, what the rate key held before this call ('' for nothing).
RESERVE: Final = (
    _PRELUDE
    + """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local ahead, longest = tonumber(ARGV[5]), tonumber(ARGV[6])
local stored_tat, stored_pause, other, bad = stored_all(KEYS)
if bad then return bad end
local pause, cut = bounded(math.max(stored_pause, tonumber(ARGV[4])), longest)
if pause > now and pause ~= stored_pause then put(KEYS[2], pause) end
-- A pause moves "now" to its deadline: grants booked during it are spaced out from there,
-- instead of all falling due at the deadline together.
local start = math.max(now, pause)
-- GCRA "virtual scheduling", as in batchpoll/ratelimit.py.
local tat = math.max(stored_tat, tonumber(ARGV[3]), start)
-- No sane store books that far ahead: the time is dropped, not capped, since a tat held at
-- the bound would book every later grant for that same moment.
if tat > start + ahead then
  cut = math.max(cut, tat - start)
  tat = start
end
local send_at = math.max(start, tat - tolerance)
tat = tat + interval
put(KEYS[1], tat)
redis.call('SET', KEYS[3], ARGV[7], 'PX', ttl_of(tat))
return {send_at - now, tat, pause, now, cut, other}
"""
)

# KEYS: tat, pause, rate. ARGV: pause from now (us, 0 only re-writes or reads), the latest pause
# deadline this caller has seen (us, 0 for none), the longest pause (us), the caller's --rate.
# Returns {pause, now, cut, rate}, as RESERVE's. Every call writes the rate key, so the check at
# start proves that the store takes writes, which a read or a PING would not.
PAUSE: Final = (
    _PRELUDE
    + """
local asked, longest = tonumber(ARGV[1]), tonumber(ARGV[3])
-- The tat is unused here, read so that a bad one shows at start.
local _, stored_pause, other, bad = stored_all(KEYS)
if bad then return bad end
local latest = math.max(stored_pause, tonumber(ARGV[2]))
if asked > 0 then latest = math.max(latest, now + asked) end
local pause, cut = bounded(latest, longest)
if pause > now and pause ~= stored_pause then put(KEYS[2], pause) end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ttl_of(pause))
return {pause, now, cut, other}
"""
)


@dataclass(frozen=True, slots=True)
class Reply:
    """One script's answer, read into our types. Times in server-time microseconds.

    ``wait`` (RESERVE only; 0 for PAUSE) counts from ``now``; ``tat`` is 0 for PAUSE; ``cut``
    is how far a time beyond the bounds was brought back; ``other_rate`` is the rate the last
    booking process declared, or None.
    """

    wait: int
    tat: int
    pause: int
    now: int
    cut: int
    other_rate: float | None


def read_reserve(raw: object, rate_key: str, most_wait_us: int) -> Reply:
    """RESERVE's reply as a Reply; Unusable unless it is one, with ``wait <= most_wait_us``."""
    wait, tat, pause, now, cut, rate = _fields(raw, 6)
    reply = Reply(
        wait=_time(wait, "wait"),
        tat=_time(tat, "tat"),
        pause=_time(pause, "pause"),
        now=_time(now, "now"),
        cut=_time(cut, "cut"),
        other_rate=_rate(rate, rate_key),
    )
    if reply.wait > most_wait_us:
        raise Unusable(f"the store booked a grant {reply.wait / 1e6:.0f} s ahead")
    return reply


def read_pause(raw: object, rate_key: str) -> Reply:
    """PAUSE's reply as a Reply; Unusable unless it is one."""
    pause, now, cut, rate = _fields(raw, 4)
    return Reply(
        wait=0,
        tat=0,
        pause=_time(pause, "pause"),
        now=_time(now, "now"),
        cut=_time(cut, "cut"),
        other_rate=_rate(rate, rate_key),
    )


def _fields(raw: object, count: int) -> list[object]:
    if not isinstance(raw, list) or len(raw) != count:
        raise Unusable(f"a script answered {_shown(raw)}, not {count} values")
    return raw


def _time(value: object, name: str) -> int:
    # bool is an int subclass; Lua numbers come back as Redis integers, never as bools.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_US:
        raise Unusable(f"a script answered {_shown(value)} for {name}")
    return value


def _rate(value: object, rate_key: str) -> float | None:
    if value is None or value == b"":
        return None
    try:
        rate = float(value.decode("ascii")) if isinstance(value, bytes) else math.nan
    except (UnicodeDecodeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise Unusable(f"{rate_key} holds a value batchpoll did not write (not a rate)")
    return rate


def _shown(value: object) -> str:
    # Cut short: a store's values are no business of a log line beyond a hint of their shape.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
