"""Addition 5: realistic spot prices, and a minimal Pricing API.

What moto lacks: every spot price in ``DescribeSpotPriceHistory`` is
0.00001, and there is no Pricing API at all, so cost tests see nothing
realistic.

What the emulator does:

- ``DescribeSpotPriceHistory`` answers per-AZ prices from ``prices.csv``
  (a copy of the reference catalog: median, min and max spot price of an
  instance type over a region's AZs). The AZs are those of the catalog's
  AZ ids (mapped to the region's AZ names); the cheapest gets the min, the
  dearest the max, the others the median. Instance types or regions that
  are not in the catalog get an estimate from moto's instance type data
  (0.0425 $/vCPU-hour on demand, 40 % of it for spot; us-east-1 prices for
  a catalog type in another region). Filters ``InstanceTypes``,
  ``ProductDescriptions`` (Linux/UNIX variants only), ``AvailabilityZone``
  and the ``availability-zone`` / ``instance-type`` /
  ``product-description`` filters, MaxResults/NextToken are supported.
  Timestamps are the start of the current hour.
- ``AWSPriceListService.GetProducts`` (json protocol, ``pricing``) for
  ServiceCode ``AmazonEC2``: one product per catalog row and variant
  (Linux or Windows; Shared or Dedicated tenancy; capacitystatus Used,
  UnusedCapacityReservation or AllocatedCapacityReservation), in the real
  response shape: ``PriceList`` entries are JSON *strings* with
  ``product.attributes`` and ``terms.OnDemand.<sku>.<offer>.priceDimensions
  .<rate>.pricePerUnit.USD``. Filters TERM_MATCH/EQUALS/CONTAINS/ANY_OF/
  NONE_OF, MaxResults (<= 100)/NextToken. As in AWS, the Pricing API only
  answers in us-east-1, eu-central-1 and ap-south-1. ``DescribeServices``
  and ``GetAttributeValues`` answer for AmazonEC2.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import json
import os
from functools import lru_cache
from typing import Any

from .protocol import AwsRequest, Response, json_error, json_response
from .registry import intercept

CSV_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prices.csv")
PRICING_REGIONS = {"us-east-1", "eu-central-1", "ap-south-1"}
LINUX_DESCRIPTIONS = ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"]
ON_DEMAND_PER_VCPU = 0.0425
SPOT_FRACTION = 0.4

LOCATIONS = {
    "us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)", "us-west-2": "US West (Oregon)",
    "eu-north-1": "EU (Stockholm)", "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)",
    "ap-south-1": "Asia Pacific (Mumbai)", "ap-northeast-1": "Asia Pacific (Tokyo)",
}
USAGE_PREFIX = {"us-east-1": "", "us-east-2": "USE2-", "us-west-1": "USW1-", "us-west-2": "USW2-",
                "eu-north-1": "EUN1-", "eu-west-1": "EU-", "eu-central-1": "EUC1-", "ap-south-1": "APS3-",
                "ap-northeast-1": "APN1-"}
FAMILY = {"c": "Compute optimized", "m": "General purpose", "r": "Memory optimized", "g": "GPU instance",
          "p": "GPU instance", "t": "General purpose", "h": "Compute optimized",
          "trn": "Machine Learning ASIC Instances", "inf": "Machine Learning ASIC Instances"}


# ------------------------------------------------------------ the catalog


def _float(value: str) -> float | None:
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return None


@lru_cache(maxsize=1)
def catalog() -> dict[tuple[str, str], dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    with open(CSV_PATH, newline="") as fh:
        for row in csv.DictReader(fh):
            rows[(row["instance_type"], row["region"])] = row
    return rows


@lru_cache(maxsize=64)
def zone_map(region: str) -> dict[str, str]:
    """AZ id -> AZ name for a region, from moto's AZ data."""
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    zones = RegionsAndZonesBackend.zones.get(region, [])
    return {z.zone_id: z.name for z in zones}


def _moto_type(instance_type: str) -> dict[str, Any] | None:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    return INSTANCE_TYPES.get(instance_type)


def on_demand_price(region: str, instance_type: str) -> float | None:
    row = catalog().get((instance_type, region)) or catalog().get((instance_type, "us-east-1"))
    if row is not None:
        return _float(row["ondemand_linux_usd_hr"])
    info = _moto_type(instance_type)
    if info is None:
        return None
    return round(ON_DEMAND_PER_VCPU * info["VCpuInfo"]["DefaultVCpus"], 4)


def spot_prices(region: str, instance_type: str) -> dict[str, float]:
    """AZ name -> current spot price of a Linux instance."""
    names = zone_map(region)
    row = catalog().get((instance_type, region))
    if row is None and (instance_type, "us-east-1") in catalog():
        base = catalog()[(instance_type, "us-east-1")]
        median = _float(base["spot_usd_hr_median"])
        return {name: median for name in sorted(names.values())} if median else {}
    if row is None:
        from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS

        info = _moto_type(instance_type)
        if info is None:
            return {}
        price = round(ON_DEMAND_PER_VCPU * SPOT_FRACTION * info["VCpuInfo"]["DefaultVCpus"], 4)
        offered = sorted({o["Location"] for o in INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region, [])
                          if o["InstanceType"] == instance_type})
        return {az: price for az in offered}
    median, low, high = (_float(row[k]) for k in ("spot_usd_hr_median", "spot_usd_hr_min", "spot_usd_hr_max"))
    count = int(_float(row["spot_az_count"]) or 0)
    if median is None or count == 0:
        return {}
    az_names = [names[z] for z in sorted(row["catalog_az_ids"].split()) if z in names]
    if not az_names:
        az_names = sorted(names.values())
    az_names = sorted(az_names[:count])
    if len(az_names) == 1:
        return {az_names[0]: median}
    out = {az: median for az in az_names}
    out[az_names[0]] = low if low is not None else median
    out[az_names[-1]] = high if high is not None else median
    return out


def spot_price(region: str, instance_type: str, az: str | None = None) -> float:
    """One spot price (for an AZ, else the region's cheapest)."""
    prices = spot_prices(region, instance_type)
    if az and az in prices:
        return prices[az]
    if prices:
        return min(prices.values())
    od = on_demand_price(region, instance_type)
    return round(od * SPOT_FRACTION, 4) if od else 0.05


# ----------------------------------------------- DescribeSpotPriceHistory


def _describe_spot_price_history(self: Any) -> Any:
    """Replacement of moto's SpotInstances.describe_spot_price_history."""
    from moto.core.responses import ActionResult

    region = self.region
    types = self._get_param("InstanceTypes", []) or []
    descriptions = self._get_param("ProductDescriptions", []) or []
    az_param = self._get_param("AvailabilityZone")
    filters = self._filters_from_querystring() or {}
    if "instance-type" in filters:
        types = [t for t in (types or filters["instance-type"]) if t in filters["instance-type"]]
    if "product-description" in filters:
        descriptions = [d for d in (descriptions or filters["product-description"])
                        if d in filters["product-description"]]
    if not types:
        types = sorted({t for (t, r) in catalog() if r == region})
    descriptions = [d for d in (descriptions or LINUX_DESCRIPTIONS) if d in LINUX_DESCRIPTIONS]
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    history = []
    for itype in types:
        for az, price in sorted(spot_prices(region, itype).items()):
            if az_param and az != az_param:
                continue
            if "availability-zone" in filters and az not in filters["availability-zone"]:
                continue
            for desc in descriptions:
                history.append({"InstanceType": itype, "ProductDescription": desc,
                                "SpotPrice": f"{price:.6f}", "AvailabilityZone": az, "Timestamp": now})
    token = self._get_param("NextToken")
    start = int(token) if token and token.isdigit() else 0
    size = int(self._get_param("MaxResults") or 1000)
    page = history[start:start + size]
    result: dict[str, Any] = {"SpotPriceHistory": page}
    result["NextToken"] = str(start + size) if start + size < len(history) else ""
    return ActionResult(result)


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from moto.ec2.responses.spot_instances import SpotInstances

    SpotInstances.describe_spot_price_history = _describe_spot_price_history


# ------------------------------------------------------------ Pricing API


def _sku(*parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:16])


def _family(instance_type: str) -> str:
    prefix = "".join(ch for ch in instance_type.split(".")[0] if ch.isalpha())
    for key in sorted(FAMILY, key=len, reverse=True):
        if prefix.startswith(key):
            return FAMILY[key]
    return "General purpose"


@lru_cache(maxsize=1)
def products() -> list[dict[str, Any]]:
    out = []
    for (itype, region), row in sorted(catalog().items()):
        price = _float(row["ondemand_linux_usd_hr"])
        if price is None:
            continue
        vcpu = int(_float(row["vcpus"]) or 0)
        variants = [
            ("Linux", "Shared", "Used", price),
            ("Linux", "Shared", "UnusedCapacityReservation", price),
            ("Linux", "Shared", "AllocatedCapacityReservation", 0.0),
            ("Windows", "Shared", "Used", price + 0.046 * vcpu),
            ("Linux", "Dedicated", "Used", price * 1.1),
        ]
        gbps = _float(row["network_baseline_gbps"]) or 0
        for os_name, tenancy, capacity, usd in variants:
            sku = _sku(itype, region, os_name, tenancy, capacity)
            attrs = {
                "servicecode": "AmazonEC2", "servicename": "Amazon Elastic Compute Cloud",
                "instanceType": itype, "instanceFamily": _family(itype), "regionCode": region,
                "location": LOCATIONS.get(region, region), "locationType": "AWS Region",
                "operatingSystem": os_name, "tenancy": tenancy, "preInstalledSw": "NA",
                "capacitystatus": capacity, "marketoption": "OnDemand",
                "licenseModel": "No License required",
                "operation": "RunInstances:0002" if os_name == "Windows" else "RunInstances",
                "usagetype": f"{USAGE_PREFIX.get(region, '')}"
                             f"{'DedicatedUsage' if tenancy == 'Dedicated' else 'BoxUsage'}:{itype}",
                "vcpu": str(vcpu), "memory": f"{_float(row['memory_gib']) or 0:g} GiB",
                "gpu": str(int(_float(row["gpu_count"]) or 0)) if (_float(row["gpu_count"]) or 0) else "NA",
                "gpuMemory": f"{_float(row['gpu_memory_gib_total']):g} GB"
                             if _float(row["gpu_memory_gib_total"]) else "NA",
                "networkPerformance": f"{gbps:g} Gigabit" if gbps >= 1 else "Up to 10 Gigabit",
                "processorArchitecture": "64-bit", "storage": "EBS only", "currentGeneration": "Yes",
                "availabilityzone": "NA",
            }
            offer, rate = "JRTCKXETXF", "6YS6EN2CT7"
            doc = {
                "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": sku},
                "serviceCode": "AmazonEC2",
                "terms": {"OnDemand": {f"{sku}.{offer}": {
                    "priceDimensions": {f"{sku}.{offer}.{rate}": {
                        "unit": "Hrs", "endRange": "Inf",
                        "description": f"${usd:.4f} per On Demand {os_name} {itype} Instance Hour",
                        "appliesTo": [], "rateCode": f"{sku}.{offer}.{rate}", "beginRange": "0",
                        "pricePerUnit": {"USD": f"{usd:.10f}"},
                    }},
                    "sku": sku, "effectiveDate": "2026-08-01T00:00:00Z", "offerTermCode": offer,
                    "termAttributes": {},
                }}},
                "version": "20260801000000",
                "publicationDate": "2026-08-01T00:00:00Z",
            }
            out.append(doc)
    return out


def _field_value(doc: dict[str, Any], field: str) -> str | None:
    if field.lower() == "servicecode":
        return doc["serviceCode"]
    attrs = doc["product"]["attributes"]
    for key, value in attrs.items():
        if key.lower() == field.lower():
            return value
    return None


def _matches(doc: dict[str, Any], flt: dict[str, str]) -> bool:
    ftype = (flt.get("Type") or "TERM_MATCH").upper()
    value = _field_value(doc, flt.get("Field", ""))
    wanted = str(flt.get("Value", ""))
    if value is None:
        return ftype == "NONE_OF"
    v = value.lower()
    if ftype in ("TERM_MATCH", "EQUALS"):
        return v == wanted.lower()
    if ftype == "CONTAINS":
        return wanted.lower() in v
    options = {w.strip().lower() for w in wanted.split(",")}
    if ftype == "ANY_OF":
        return v in options
    if ftype == "NONE_OF":
        return v not in options
    return False


def _pricing_region_error(req: AwsRequest) -> Response | None:
    if req.region not in PRICING_REGIONS:
        return json_error("EndpointNotAvailable",
                          f"The Pricing API has no endpoint in {req.region}; use one of "
                          f"{', '.join(sorted(PRICING_REGIONS))}.", 400)
    return None


def _paginate(items: list[Any], body: dict[str, Any], max_size: int = 100) -> tuple[list[Any], str | None]:
    token = body.get("NextToken")
    try:
        start = int(base64.b64decode(token).decode()) if token else 0
    except ValueError:
        raise ValueError("invalid token")
    size = min(int(body.get("MaxResults") or max_size), max_size)
    nxt = base64.b64encode(str(start + size).encode()).decode() if start + size < len(items) else None
    return items[start:start + size], nxt


@intercept("pricing", "GetProducts")
def get_products(req: AwsRequest) -> Response:
    err = _pricing_region_error(req)
    if err:
        return err
    body = req.json
    if not body.get("ServiceCode"):
        return json_error("ValidationException", "ServiceCode is required")
    docs = products() if body["ServiceCode"] == "AmazonEC2" else []
    for flt in body.get("Filters") or []:
        docs = [d for d in docs if _matches(d, flt)]
    try:
        page, token = _paginate(docs, body)
    except ValueError:
        return json_error("InvalidNextTokenException", "The pagination token is invalid.")
    out: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(d) for d in page]}
    if token:
        out["NextToken"] = token
    return json_response(out)


@intercept("pricing", "DescribeServices")
def describe_services(req: AwsRequest) -> Response:
    err = _pricing_region_error(req)
    if err:
        return err
    code = req.json.get("ServiceCode")
    services = [] if code and code != "AmazonEC2" else [
        {"ServiceCode": "AmazonEC2", "AttributeNames": sorted(products()[0]["product"]["attributes"])}]
    return json_response({"Services": services, "FormatVersion": "aws_v1"})


@intercept("pricing", "GetAttributeValues")
def get_attribute_values(req: AwsRequest) -> Response:
    err = _pricing_region_error(req)
    if err:
        return err
    body = req.json
    values: list[str] = []
    if body.get("ServiceCode") == "AmazonEC2":
        values = sorted({_field_value(d, body.get("AttributeName", "")) or "" for d in products()} - {""})
    try:
        page, token = _paginate([{"Value": v} for v in values], body)
    except ValueError:
        return json_error("InvalidNextTokenException", "The pagination token is invalid.")
    out: dict[str, Any] = {"AttributeValues": page}
    if token:
        out["NextToken"] = token
    return json_response(out)
