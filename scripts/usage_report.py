#!/usr/bin/env python3
"""Sums a month of the Worker's usage records per API key (README "Keys, limits and metering").

Reads the Worker's `{"event": "clipedge_usage", ...}` log lines from files (or stdin) in any of
the forms they are exported in: the bare JSON line (wrangler dev's log, `wrangler tail` text),
`wrangler tail --format json` events and Workers Logs / Logpush trace events (the line inside
their `logs[].message` / `Logs[].Message`). Records are bucketed by the UTC month of `unix_ms`.

    python3 scripts/usage_report.py --month 2026-11 worker-logs/*.json
    python3 scripts/usage_report.py --month 2026-11 --keys keys.json --json logs.jsonl

With `--keys` (the CLIPEDGE_API_KEYS table, hashes only), each key's `monthly_quota` is
compared with its queries: the Worker does not enforce quotas, this report (the billing job)
does. Exit status 3 when some key is over its quota.
"""

import argparse
import datetime
import json
import sys

USAGE_EVENT = "clipedge_usage"
FIELDS = ["queries", "scanner_calls", "gets", "bytes", "worker_ms", "scanner_ms"]


def usage_records(value):
    """The usage records inside one parsed JSON value (a record, or a log event holding some)."""
    if isinstance(value, dict):
        if value.get("event") == USAGE_EVENT:
            yield value
            return
        for logs_key, message_key in (("logs", "message"), ("Logs", "Message")):
            for log in value.get(logs_key) or []:
                messages = log.get(message_key) if isinstance(log, dict) else None
                for message in messages if isinstance(messages, list) else [messages]:
                    if isinstance(message, str):
                        yield from records_in_text(message)
                    elif isinstance(message, dict):
                        yield from usage_records(message)
    elif isinstance(value, list):
        for item in value:
            yield from usage_records(item)


def records_in_text(line):
    """Records in one line of text: JSON from its first `{` (log lines may carry a prefix)."""
    start = line.find("{")
    if start < 0:
        return
    try:
        value = json.loads(line[start:])
    except json.JSONDecodeError:
        return
    yield from usage_records(value)


def month_of(record):
    stamp = datetime.datetime.fromtimestamp(record.get("unix_ms", 0) / 1000, datetime.timezone.utc)
    return f"{stamp.year:04d}-{stamp.month:02d}"


def summarize(lines, month):
    totals = {}
    for line in lines:
        for record in records_in_text(line):
            if month and month_of(record) != month:
                continue
            key = record.get("key", "anonymous")
            entry = totals.setdefault(
                key, {"tier": record.get("tier", ""), "requests": 0, **{field: 0 for field in FIELDS}}
            )
            entry["requests"] += 1
            for field in FIELDS:
                entry[field] += record.get(field, 0) or 0
    for entry in totals.values():
        entry["worker_ms"] = round(entry["worker_ms"], 2)
        entry["scanner_ms"] = round(entry["scanner_ms"], 2)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="log files (default: stdin)")
    now = datetime.datetime.now(datetime.timezone.utc)
    parser.add_argument("--month", default=f"{now.year:04d}-{now.month:02d}",
                        help="YYYY-MM (UTC), or 'all' (default: this month)")
    parser.add_argument("--keys", help="the key table (CLIPEDGE_API_KEYS JSON) to check quotas")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    def lines():
        if not args.files:
            yield from sys.stdin
        for path in args.files:
            with open(path, encoding="utf-8", errors="replace") as file:
                yield from file

    totals = summarize(lines(), None if args.month == "all" else args.month)
    over_quota = []
    if args.keys:
        with open(args.keys, encoding="utf-8") as file:
            table = json.load(file)
        for entry in table:
            quota = entry.get("monthly_quota")
            used = totals.get(entry["name"], {}).get("queries", 0)
            if entry["name"] in totals:
                totals[entry["name"]]["monthly_quota"] = quota
            if quota is not None and used > quota:
                over_quota.append(entry["name"])
    if args.json:
        print(json.dumps({"month": args.month, "keys": totals, "over_quota": over_quota}, indent=2))
    else:
        header = ["key", "tier", "requests", *FIELDS, "quota"]
        print("\t".join(header))
        for key in sorted(totals):
            entry = totals[key]
            quota = entry.get("monthly_quota")
            row = [key, entry["tier"], entry["requests"], *(entry[field] for field in FIELDS),
                   "" if quota is None else quota]
            print("\t".join(str(value) for value in row))
        for key in over_quota:
            print(f"over quota: {key}", file=sys.stderr)
    return 3 if over_quota else 0


if __name__ == "__main__":
    sys.exit(main())
