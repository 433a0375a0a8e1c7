//! The golden domain XMLs go through libvirt's own parser (the `test:///default` driver, no
//! daemon needed) and through vmd's real hypervisor code: define, metadata read back, start,
//! destroy, undefine.

#![allow(clippy::unwrap_used)]

use backroom_vmd::hypervisor::{DomState, Hypervisor};
use backroom_vmd::libvirt::Libvirt;

#[test]
fn golden_xml_is_accepted_by_libvirt_and_metadata_reads_back() {
    let hv = Libvirt::open("test:///default").unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let xml = std::fs::read_to_string(e.unwrap().path()).unwrap();
        hv.define(&xml).unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
    let doms = hv.list().unwrap();
    let nvr = doms.iter().find(|d| d.name == "bk-nvr").unwrap();
    let meta = nvr.meta.as_ref().expect("vmd's metadata on bk-nvr");
    assert_eq!((meta.workload.as_str(), meta.revision.as_str()), ("nvr", "rev1"));
    assert_eq!(nvr.state, DomState::ShutOff);
    // The test driver's own domain is not Backroom's.
    assert!(doms.iter().any(|d| d.name == "test" && d.meta.is_none()));
    hv.start("bk-nvr").unwrap();
    assert_eq!(hv.get("bk-nvr").unwrap().unwrap().state, DomState::Running);
    hv.set_meta(
        "bk-nvr",
        &backroom_vmd::xml::Meta {
            workload: "nvr".into(),
            revision: "rev9".into(),
            spec: meta.spec.clone(),
        },
    )
    .unwrap();
    assert_eq!(hv.get("bk-nvr").unwrap().unwrap().meta.unwrap().revision, "rev9");
    assert!(backroom_vmd::xml::parse_meta(&hv.xml("bk-nvr").unwrap()).unwrap().revision == "rev9");
    hv.destroy("bk-nvr").unwrap();
    hv.undefine("bk-nvr").unwrap();
    assert!(hv.get("bk-nvr").unwrap().is_none());
}
