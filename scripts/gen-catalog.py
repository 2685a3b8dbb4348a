#!/usr/bin/env python3
"""Convert the instance/price CSV into the catalog that ships with `infra`.

    scripts/gen-catalog.py [CSV] [OUT]

CSV defaults to src/catalog/aws-instances.csv (a copy of the reference data,
one row per instance type and region), OUT to src/catalog/catalog.json, which
`src/catalog` embeds with include_str!. The output is deterministic: types in
CSV order, regions in CSV order, keys in a fixed order, so regenerating from
the same CSV gives the same bytes. `infra catalog refresh` writes the same
format from the live APIs into the user's cache.
"""

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "src" / "catalog" / "aws-instances.csv"
DEFAULT_OUT = ROOT / "src" / "catalog" / "catalog.json"

DATE = "2026-08"
SOURCE = (
    "reference aws-instances.csv: public DescribeInstanceTypes-derived catalogs, "
    "the AWS Pricing API (Linux on-demand, shared tenancy) and spot price history "
    "(median/min/max over the region's AZs, one snapshot per AZ, July-August 2026)"
)


def num(text, kind=float):
    text = (text or "").strip()
    if text == "":
        return None
    value = kind(text)
    return value


def whole(text):
    return num(text, int)


def convert(rows):
    types = {}
    for row in rows:
        name = row["instance_type"].strip()
        t = types.get(name)
        attrs = {
            "vcpus": whole(row["vcpus"]),
            "memory_gib": num(row["memory_gib"]),
            "gpus": whole(row["gpu_count"]) or 0,
            "gpu_model": row["gpu_model"].strip() or None,
            "gpu_memory_gib": num(row["gpu_memory_gib_per_gpu"]) or 0.0,
            "efa": row["efa_supported"].strip().lower() == "yes",
            "max_efa_interfaces": whole(row["max_efa_interfaces"]) or 0,
            "network_cards": whole(row["network_cards"]) or 1,
            "network_gbps": num(row["network_baseline_gbps"]),
        }
        if t is None:
            t = dict(attrs)
            t["prices"] = {}
            types[name] = t
        else:
            for k, v in attrs.items():
                if t[k] != v:
                    sys.exit(f"{name}: {k} differs between regions ({t[k]!r} vs {v!r})")
        region = row["region"].strip()
        if region in t["prices"]:
            sys.exit(f"{name}: two rows for {region}")
        price = {"on_demand": num(row["ondemand_linux_usd_hr"])}
        median = num(row["spot_usd_hr_median"])
        if median is not None:
            price["spot"] = {
                "median": median,
                "min": num(row["spot_usd_hr_min"]),
                "max": num(row["spot_usd_hr_max"]),
                "zones": whole(row["spot_az_count"]) or 0,
            }
        else:
            price["spot"] = None
        note = row.get("notes", "").strip()
        if note:
            price["note"] = note
        t["prices"][region] = price
    return {"format": 1, "date": DATE, "source": SOURCE, "instance_types": types}


def main(argv):
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_CSV
    out = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT
    with open(src, newline="", encoding="utf-8") as f:
        catalog = convert(csv.DictReader(f))
    text = json.dumps(catalog, indent=1, ensure_ascii=False) + "\n"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {len(catalog['instance_types'])} instance types", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
