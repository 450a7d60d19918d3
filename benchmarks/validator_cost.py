"""What schema validation and JSON decoding cost on the agent's request path.

Run: .venv/bin/python benchmarks/validator_cost.py [--json]

Compares, on the same inputs in the same run: fastjsonschema (compiled, what hostbus
uses) against jsonschema (the reference implementation, validator built once), and
orjson (what hostbus uses) against the standard library's json. Reports the median of
several repeats in microseconds per operation, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from datetime import UTC, datetime, timedelta

import fastjsonschema
import jsonschema
import orjson

from hostbus.envelope import REQUEST_TYPE, parse_request
from hostbus.schema import envelope_schema, load_agent_schema
from hostbus.transport.base import Delivery, Properties


def per_op_us(fn, number: int = 20000, repeat: int = 5) -> float:
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    args_schema = load_agent_schema("host").methods["processes"].args
    args = {"name": "python*", "user": "root", "sort": "memory", "limit": 20}
    request_schema = envelope_schema("request")
    body = {"v": 1, "agent": "host", "method": "processes", "args": args,
            "target": {"host": "web01"},
            "deadline": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    raw = json.dumps(body).encode()

    fast_args = fastjsonschema.compile(args_schema)
    slow_args = jsonschema.Draft7Validator(args_schema)
    fast_req = fastjsonschema.compile(request_schema)
    slow_req = jsonschema.Draft7Validator(request_schema,
                                          format_checker=jsonschema.FormatChecker())
    delivery = Delivery(raw, Properties(message_id="m", content_type="application/json",
                                        type=REQUEST_TYPE), "hostbus.request", "host.web01")

    rows = [
        ("args validation (host.processes)", per_op_us(lambda: fast_args(dict(args))),
         per_op_us(lambda: slow_args.validate(dict(args)), number=5000)),
        ("request envelope validation", per_op_us(lambda: fast_req(dict(body))),
         per_op_us(lambda: slow_req.validate(dict(body)), number=2000)),
        ("JSON decode of the request", per_op_us(lambda: orjson.loads(raw)),
         per_op_us(lambda: json.loads(raw))),
    ]
    whole = per_op_us(lambda: parse_request(delivery, max_bytes=1 << 20))
    result = {
        "python": sys.version.split()[0],
        "rows": [{"what": w, "hostbus_us": round(a, 2), "alternative_us": round(b, 2),
                  "alternative_over_hostbus": round(b / a, 1)} for w, a, b in rows],
        "parse_request_total_us": round(whole, 2),
    }
    if opts.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'':36} {'hostbus':>10} {'alternative':>12} {'ratio':>7}")
    for (what, a, b), label in zip(rows, ["fastjsonschema vs jsonschema",
                                          "fastjsonschema vs jsonschema",
                                          "orjson vs json"], strict=True):
        print(f"{what:36} {a:8.2f}us {b:10.2f}us {b / a:6.1f}x   ({label})")
    print(f"whole parse_request (size, properties, JSON, envelope, deadline): {whole:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
