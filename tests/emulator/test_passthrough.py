"""What the emulator does not handle itself passes to moto unchanged."""

from __future__ import annotations

import io


def test_s3_head_multipart_and_ranges(aws):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="passthrough")
    s3.put_object(Bucket="passthrough", Key="small", Body=b"hello" * 1000)
    head = s3.head_object(Bucket="passthrough", Key="small")
    assert head["ContentLength"] == 5000  # HEAD keeps moto's Content-Length
    part = s3.get_object(Bucket="passthrough", Key="small", Range="bytes=0-9")["Body"].read()
    assert part == b"hellohello"
    s3.upload_fileobj(io.BytesIO(b"x" * (9 * 1024 * 1024)), "passthrough", "big")
    assert s3.head_object(Bucket="passthrough", Key="big")["ContentLength"] == 9 * 1024 * 1024
    calls = aws.control("GET", "calls")["calls"]
    assert calls["s3:UploadPart"] == 2 and calls["s3:CompleteMultipartUpload"] == 1


def test_ssm_parameters_and_sts(aws):
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/infra/x", Value="v", Type="String")
    assert ssm.get_parameter(Name="/infra/x")["Parameter"]["Value"] == "v"
    assert aws.client("sts").get_caller_identity()["Account"] == aws.account_id
