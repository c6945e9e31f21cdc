//! The planner: which tests share a VM, in which order.

use super::*;

fn def(name: &str, fw: &[Firmware], exclusive: bool, mem: u64) -> TestDef {
    TestDef {
        name: name.into(),
        path: PathBuf::from(name),
        timeout: Duration::from_secs(60),
        memory_mib: mem,
        firmware: fw.to_vec(),
        tags: vec![],
        exclusive,
        disk_size: None,
    }
}

#[test]
fn plan_shares_vms_and_isolates_exclusive_tests() {
    use Firmware::*;
    let tests = vec![
        def("a", &[Bios, Uefi], false, 1536),
        def("b", &[Bios], false, 1536),
        def("c", &[Bios], true, 1536),
        def("d", &[Bios], false, 2048),
        def("e", &[Uefi], false, 1536),
    ];
    let g = plan(&tests, 6 << 30);
    let names: Vec<(Firmware, Vec<String>)> = g
        .iter()
        .map(|g| (g.firmware, g.cases.iter().map(|c| c.id()).collect()))
        .collect();
    assert_eq!(
        names,
        vec![
            (Bios, vec!["a@bios".to_string(), "b@bios".into()]),
            (Uefi, vec!["a@uefi".into(), "e@uefi".into()]),
            (Bios, vec!["c@bios".into()]),
            (Bios, vec!["d@bios".into()]),
        ]
    );
}
