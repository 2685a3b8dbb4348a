"""Addition 5: realistic spot prices and the Pricing API."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os

import pytest
from botocore.exceptions import ClientError

CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prices.csv")


def catalog_row(instance_type, region):
    with open(CSV, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["instance_type"] == instance_type and row["region"] == region:
                return row
    raise KeyError(instance_type)


def test_spot_price_history_per_az_from_catalog(aws):
    ec2 = aws.client("ec2")
    history = ec2.describe_spot_price_history(
        InstanceTypes=["c6i.xlarge"], ProductDescriptions=["Linux/UNIX"],
        StartTime=dt.datetime.now(dt.timezone.utc))["SpotPriceHistory"]
    row = catalog_row("c6i.xlarge", "us-east-1")
    prices = {h["AvailabilityZone"]: float(h["SpotPrice"]) for h in history}
    assert len(prices) == int(row["spot_az_count"])
    assert min(prices.values()) == pytest.approx(float(row["spot_usd_hr_min"]))
    assert max(prices.values()) == pytest.approx(float(row["spot_usd_hr_max"]))
    assert float(row["spot_usd_hr_median"]) in [pytest.approx(p) for p in prices.values()]
    assert all(h["ProductDescription"] == "Linux/UNIX" for h in history)
    assert all(az.startswith("us-east-1") for az in prices)


def test_spot_price_history_other_region_and_filters(aws):
    ec2 = aws.client("ec2", region="eu-north-1")
    history = ec2.describe_spot_price_history(
        InstanceTypes=["g6e.xlarge", "c6i.xlarge"],
        Filters=[{"Name": "product-description", "Values": ["Linux/UNIX"]},
                 {"Name": "availability-zone", "Values": ["eu-north-1a"]}])["SpotPriceHistory"]
    assert {h["InstanceType"] for h in history} <= {"g6e.xlarge", "c6i.xlarge"}
    assert {h["AvailabilityZone"] for h in history} == {"eu-north-1a"}
    gpu = [float(h["SpotPrice"]) for h in history if h["InstanceType"] == "g6e.xlarge"]
    cpu = [float(h["SpotPrice"]) for h in history if h["InstanceType"] == "c6i.xlarge"]
    assert gpu and cpu and gpu[0] > cpu[0] > 0.01
    assert all(float(h["SpotPrice"]) != 0.00001 for h in history)


def test_spot_price_pagination(aws):
    ec2 = aws.client("ec2")
    pages = list(ec2.get_paginator("describe_spot_price_history").paginate(
        ProductDescriptions=["Linux/UNIX"], PaginationConfig={"PageSize": 10}))
    assert len(pages) > 1
    total = sum(len(p["SpotPriceHistory"]) for p in pages)
    assert total > 50


def ec2_products(pricing, instance_type, region, **extra):
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
               "marketoption": "OnDemand"}
    filters.update(extra)
    return pricing.get_products(ServiceCode="AmazonEC2", Filters=[
        {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items() if v is not None])


def test_pricing_get_products_real_shape(aws):
    pricing = aws.client("pricing")
    resp = ec2_products(pricing, "p5.48xlarge", "us-west-2")
    assert resp["FormatVersion"] == "aws_v1"
    assert len(resp["PriceList"]) == 1
    assert isinstance(resp["PriceList"][0], str)
    doc = json.loads(resp["PriceList"][0])
    assert doc["product"]["attributes"]["instanceType"] == "p5.48xlarge"
    term = next(iter(doc["terms"]["OnDemand"].values()))
    dim = next(iter(term["priceDimensions"].values()))
    assert float(dim["pricePerUnit"]["USD"]) == pytest.approx(
        float(catalog_row("p5.48xlarge", "us-west-2")["ondemand_linux_usd_hr"]))
    assert dim["unit"] == "Hrs"


def test_pricing_without_all_filters_is_ambiguous_like_aws(aws):
    pricing = aws.client("pricing")
    loose = ec2_products(pricing, "c6i.xlarge", "us-east-1", operatingSystem=None, tenancy=None,
                         capacitystatus=None)
    prices = {float(next(iter(next(iter(json.loads(p)["terms"]["OnDemand"].values()))["priceDimensions"]
                               .values()))["pricePerUnit"]["USD"]) for p in loose["PriceList"]}
    assert len(loose["PriceList"]) > 1 and len(prices) > 1


def test_pricing_pagination_and_region(aws):
    pricing = aws.client("pricing")
    pages = list(pricing.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", Filters=[{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}],
        PaginationConfig={"PageSize": 20}))
    assert len(pages) > 1
    assert all(len(p["PriceList"]) <= 20 for p in pages)
    with pytest.raises(ClientError):
        aws.client("pricing", region="eu-north-1").get_products(ServiceCode="AmazonEC2")
    assert aws.client("pricing", region="eu-central-1").get_products(
        ServiceCode="AmazonEC2", MaxResults=1)["PriceList"]
