//! Unit tests of `render` (images, user data quoting).

use super::*;

#[test]
fn images_resolve_through_ssm_unless_an_ami_id_is_given() {
    let cat = Catalog::builtin();
    let t = cat.get("c6i.xlarge").unwrap();
    let mut g = NodeGroup {
        name: "cpu".into(),
        instance_type: "c6i.xlarge".into(),
        count: 1,
        market: crate::plan::Market::Spot,
        efa: false,
        efa_set: None,
        placement: None,
        ami: None,
        volume_gb: 100,
        slots: 1,
        max_lifetime_hours: None,
        idle_shutdown_minutes: 20,
        gpus: None,
        workers_per_slot: None,
        availability_zone: None,
        pos: Default::default(),
        path: String::new(),
    };
    assert_eq!(image_id(&g, t), format!("resolve:ssm:{DEFAULT_AMI_CPU}"));
    g.ami = Some("ami-0123456789abcdef0".into());
    assert_eq!(image_id(&g, t), "ami-0123456789abcdef0");
    g.ami = Some("/my/ubuntu/ami".into());
    assert_eq!(image_id(&g, t), "resolve:ssm:/my/ubuntu/ami");
    assert_eq!(root_device(&image_id(&g, t)), "/dev/sda1");
    g.ami = None;
    g.instance_type = "g5.xlarge".into();
    assert_eq!(
        image_id(&g, cat.get("g5.xlarge").unwrap()),
        format!("resolve:ssm:{DEFAULT_AMI_GPU}")
    );
    g.instance_type = "trn1.32xlarge".into();
    assert_eq!(
        image_id(&g, cat.get("trn1.32xlarge").unwrap()),
        format!("resolve:ssm:{DEFAULT_AMI_NEURON}")
    );
}

#[test]
fn user_data_values_are_quoted_for_the_shell_and_for_fn_sub() {
    let hb = shell_registry().unwrap();
    let text = render_text(
        &hb,
        "userdata.sh.hbs",
        &UserDataView {
            project: "p",
            phase: "a'b ${x} $(id)",
            group: "g",
            instance_type: "c6i.xlarge",
            slots: 2,
            efa: false,
            lifetime_minutes: 60,
            boot_idle_minutes: 30,
        },
    )
    .unwrap();
    assert!(
        text.contains("INFRA_PHASE='a'\"'\"'b ${!x} $(id)'"),
        "{text}"
    );
}

/// A node that never gets the agent (no controller alive when it booted)
/// stops billing too: the user data arms a boot-time idle timer (the
/// watcher disarms it), which deletes the node's fleet without terminating
/// its instances and powers off.
#[test]
fn user_data_arms_a_boot_idle_timer_that_stops_the_fleet_and_powers_off() {
    let hb = shell_registry().unwrap();
    let text = render_text(
        &hb,
        "userdata.sh.hbs",
        &UserDataView {
            project: "p",
            phase: "x",
            group: "g",
            instance_type: "c6i.xlarge",
            slots: 1,
            efa: false,
            lifetime_minutes: 600,
            boot_idle_minutes: 30,
        },
    )
    .unwrap();
    for want in [
        "OnBootSec=30min",
        "touch /etc/infra/idle-boot-timer",
        "systemctl enable --now infra-idle-boot.timer",
        "aws ec2 delete-fleets --fleet-ids \"$fleet\" --no-terminate-instances",
        "systemctl poweroff --no-block",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    // after the deadline (nothing may skip it), before anything else
    let deadline = text.find("infra-deadline.timer").unwrap();
    let idle = text.find("infra-idle-boot.timer").unwrap();
    let identity = text.find("/etc/infra/node.env").unwrap();
    assert!(deadline < idle && idle < identity);
    // no `${` but CloudFormation's own (Fn::Sub would take it)
    for (i, _) in text.match_indices("${") {
        let rest = &text[i..];
        assert!(
            ["${Bucket}", "${ValidUntil}", "${AWS::Region}", "${!"]
                .iter()
                .any(|ok| rest.starts_with(ok)),
            "{}",
            &rest[..rest.len().min(30)]
        );
    }
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_newline_in_a_name_does_not_end_the_user_data_comment() {
    let hb = shell_registry().unwrap();
    let text = render_text(
        &hb,
        "userdata.sh.hbs",
        &UserDataView {
            project: "p\ntouch /tmp/pwned-project",
            phase: "x\ntouch /tmp/pwned\n",
            group: "g\rid",
            instance_type: "c6i.xlarge",
            slots: 2,
            efa: false,
            lifetime_minutes: 60,
            boot_idle_minutes: 30,
        },
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].contains("phase 'x?touch /tmp/pwned?'"), "{text}");
    assert!(lines[2].starts_with("# Generated"), "{text}");
}
