"""Addition 7: isolation by account (x-moto-account-id) and reset."""

from __future__ import annotations

import threading

from harness import new_account_id


def test_accounts_do_not_see_each_other(emulator):
    a, b = new_account_id(), new_account_id()
    ec2_a, ec2_b = emulator.client("ec2", account_id=a), emulator.client("ec2", account_id=b)
    ec2_a.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)
    emulator.client("s3", account_id=a).create_bucket(Bucket=f"bucket-{a}")

    def count(ec2):
        return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])

    assert count(ec2_a) == 2 and count(ec2_b) == 0
    assert emulator.client("ssm", account_id=b).describe_instance_information()["InstanceInformationList"] == []
    owner = ec2_a.describe_instances()["Reservations"][0]["OwnerId"]
    assert owner == a

    emulator.control("POST", "reset", {"account_id": a})
    assert count(ec2_a) == 0
    assert emulator.client("s3", account_id=a).list_buckets()["Buckets"] == []
    # the bucket name is free again, even for another account
    emulator.client("s3", account_id=b).create_bucket(Bucket=f"bucket-{a}")


def test_access_key_that_is_an_account_id_selects_the_account(emulator):
    import boto3

    acct = new_account_id()
    emulator.client("ec2", account_id=acct).run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    plain = boto3.client("ec2", endpoint_url=emulator.url, region_name="us-east-1",
                         aws_access_key_id=acct, aws_secret_access_key="testing")
    assert len(plain.describe_instances()["Reservations"]) == 1
    emulator.control("POST", "reset", {"account_id": acct})


def test_parallel_tests_on_one_emulator(emulator):
    """Several "tests" at once, each in its own account, running commands."""
    errors: list[str] = []

    def one_test() -> None:
        acct = new_account_id()
        try:
            ec2 = emulator.client("ec2", account_id=acct)
            ssm = emulator.client("ssm", account_id=acct)
            iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
            cmd = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                                   Parameters={"commands": [f"echo {acct}"]})["Command"]
            import time

            for _ in range(200):
                inv = ssm.get_command_invocation(CommandId=cmd["CommandId"], InstanceId=iid)
                if inv["Status"] == "Success":
                    break
                time.sleep(0.05)
            if inv["StandardOutputContent"] != f"{acct}\n":
                errors.append(f"{acct}: {inv['Status']} {inv['StandardOutputContent']!r}")
            if len(ec2.describe_instances()["Reservations"]) != 1:
                errors.append(f"{acct}: sees other accounts' instances")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))
        finally:
            emulator.control("POST", "reset", {"account_id": acct})

    threads = [threading.Thread(target=one_test) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_global_reset(emulator):
    acct = new_account_id()
    ec2 = emulator.client("ec2", account_id=acct)
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    emulator.client("ec2").describe_instances()
    emulator.control("POST", "reset")
    assert ec2.describe_instances()["Reservations"] == []
    assert emulator.control("GET", "calls")["total"] == 0
