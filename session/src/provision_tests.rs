use super::*;

use proptest::prelude::*;

fn token() -> EnrollToken {
    EnrollToken::generate("store-0042", &"ab".repeat(32))
}

fn path() -> &'static Path {
    Path::new("/run/backroom/stick/provision.toml")
}

/// The spec's example, with a real token and its optional keys filled in (but not the ones
/// this version refuses).
fn spec_example(token: &EnrollToken) -> String {
    format!(
        r#"# where central is: one or more URLs of central's node port, tried in order
central = ["https://central.example:7443"]

# either a one-time store token (centralctl token create) ...
token = "{token}"
# ... or, for a fleet-wide image, the fleet provisioning key; the box then presents its DMI
# serial and central decides which store it is (centralctl box expect / box claim)
# fleet_key = "bkf1...."

# optional: trust for central when the token does not carry it (a fleet key does not)
ca_sha256 = "{ca}"

# optional: registries
insecure_registries = ["10.0.2.2:5055"]    # plain HTTP allowed for these
[registry_ca]                               # a CA file per registry, PEM inline
"registry.example:443" = """{pem}"""

# optional: the uplink, for a store whose management network has no DHCP
# [uplink]
# interface = "auto"            # or a name
# address = "10.42.0.20/24"
"#,
        ca = token.ca_fingerprint,
        pem = test_pem(),
    )
}

fn test_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["registry.example".to_string()]).unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn invalid(text: &str) -> (Position, String) {
    match parse(path(), text).unwrap_err() {
        ProvisionError::Invalid { at: Some(at), why, .. } => (at, why),
        other => panic!("not an error with a position: {other:?}"),
    }
}

#[test]
fn the_spec_example_parses() {
    let t = token();
    let p = parse(path(), &spec_example(&t)).unwrap();
    assert_eq!(p.central, ["https://central.example:7443"]);
    assert_eq!(p.token, t);
    assert_eq!(p.insecure_registries, ["10.0.2.2:5055"]);
    assert_eq!(p.registry_ca.keys().collect::<Vec<_>>(), ["registry.example:443"]);
    assert!(!format!("{p:?}").contains(&t.secret), "Debug hides the secret");
}

#[test]
fn the_minimal_file_parses() {
    let t = token();
    let text = format!("central = [\"https://a:7443\", \"http://b:7443\"]\ntoken = \"{t}\"\n");
    let p = parse(path(), &text).unwrap();
    assert_eq!(p.central, ["https://a:7443", "http://b:7443"]);
    assert!(p.insecure_registries.is_empty() && p.registry_ca.is_empty());
}

#[test]
fn an_unknown_key_is_an_error_at_its_line_and_column() {
    let t = token();
    let text = format!("central = [\"https://a:7443\"]\ntoken = \"{t}\"\n\n  centrl = 1\n");
    let (at, why) = invalid(&text);
    assert_eq!(at, Position { line: 4, column: 3 }, "{why}");
    assert!(why.contains("unknown field `centrl`"), "{why}");
    let e = parse(path(), &text).unwrap_err().to_string();
    assert!(e.starts_with("/run/backroom/stick/provision.toml:4:3: unknown field `centrl`"), "{e}");

    // Inside a table too.
    let text =
        format!("central = [\"https://a:7443\"]\ntoken = \"{t}\"\n[uplink]\nadress = \"x\"\n");
    let (at, why) = invalid(&text);
    assert_eq!((at.line, at.column), (4, 1), "{why}");
    assert!(why.contains("adress"), "{why}");
}

#[test]
fn a_toml_syntax_error_has_its_position() {
    let (at, why) = invalid("central = [\"https://a:7443\"\ntoken = 1\n");
    assert_eq!(at.line, 2, "{why}");
}

#[test]
fn a_bad_token_is_refused_where_it_is() {
    let text = "central = [\"https://a:7443\"]\ntoken = \"bkt1.store.short.abc\"\n";
    let (at, why) = invalid(text);
    assert_eq!(at, Position { line: 2, column: 9 });
    assert!(why.contains("`token`: this is not a Backroom enrollment token"), "{why}");
}

#[test]
fn central_is_required_non_empty_and_made_of_urls() {
    let t = token();
    let (at, why) = invalid(&format!("token = \"{t}\"\n"));
    assert!(why.contains("no `central`"), "{why}");
    assert_eq!(at.line, 1);
    let (at, why) = invalid(&format!("central = []\ntoken = \"{t}\"\n"));
    assert!(why.contains("`central` is empty"), "{why}");
    assert_eq!((at.line, at.column), (1, 11));
    let (at, why) =
        invalid(&format!("central = [\"https://a:7443\", \"central:7443\"]\ntoken = \"{t}\"\n"));
    assert!(why.contains("\"central:7443\" is not an https://"), "{why}");
    assert_eq!((at.line, at.column), (1, 30));
    let (_, why) = invalid(&format!("central = \"https://a:7443\"\ntoken = \"{t}\"\n"));
    assert!(why.contains("sequence"), "a string, not an array: {why}");
}

#[test]
fn a_fleet_key_is_refused_with_what_to_do_instead() {
    let (at, why) = invalid("central = [\"https://a:7443\"]\nfleet_key = \"bkf1.abc\"\n");
    assert_eq!(at.line, 2);
    assert!(why.contains("fleet key is not supported yet"), "{why}");
    assert!(why.contains("centralctl token create"), "{why}");
    let t = token();
    let (_, why) =
        invalid(&format!("central = [\"https://a\"]\ntoken = \"{t}\"\nfleet_key = \"bkf1.x\"\n"));
    assert!(why.contains("not both"), "{why}");
}

#[test]
fn an_uplink_is_refused_with_what_to_do_instead() {
    let t = token();
    let text = format!(
        "central = [\"https://a:7443\"]\ntoken = \"{t}\"\n[uplink]\ninterface = \"auto\"\naddress = \"10.42.0.20/24\"\nvlan = 100\n"
    );
    let (at, why) = invalid(&text);
    assert_eq!((at.line, at.column), (3, 1), "the [uplink] header: {why}");
    assert!(why.contains("uplink override"), "{why}");
}

#[test]
fn no_token_is_an_error() {
    let (_, why) = invalid("central = [\"https://a:7443\"]\n");
    assert!(why.contains("no `token`"), "{why}");
}

#[test]
fn ca_sha256_must_be_the_tokens() {
    let t = token();
    let text = format!(
        "central = [\"https://a\"]\ntoken = \"{t}\"\nca_sha256 = \"{}\"\n",
        "cd".repeat(32)
    );
    let (at, why) = invalid(&text);
    assert_eq!((at.line, at.column), (3, 13));
    assert!(why.contains("is not the CA the token trusts"), "{why}");
    let text = format!("central = [\"https://a\"]\ntoken = \"{t}\"\nca_sha256 = \"abc\"\n");
    assert!(invalid(&text).1.contains("64 hexadecimal digits"));
    // Upper case is the same hash.
    let text = format!(
        "central = [\"https://a\"]\ntoken = \"{t}\"\nca_sha256 = \"{}\"\n",
        t.ca_fingerprint.to_ascii_uppercase()
    );
    assert!(parse(path(), &text).is_ok());
}

#[test]
fn registries_are_checked() {
    let t = token();
    let base = format!("central = [\"https://a\"]\ntoken = \"{t}\"\n");
    let (at, why) = invalid(&format!("{base}insecure_registries = [\"10.0.2.2\"]\n"));
    assert!(why.contains("not host:port"), "{why}");
    assert_eq!((at.line, at.column), (3, 24));
    assert!(invalid(&format!("{base}insecure_registries = [\"r:99999\"]\n")).1.contains("port"));
    let (at, why) = invalid(&format!("{base}[registry_ca]\n\"r.example\" = \"not a pem\"\n"));
    assert!(why.contains("`registry_ca` for r.example"), "{why}");
    assert_eq!(at.line, 4);
}

#[test]
fn a_missing_file_names_itself() {
    let e = load(Path::new("/nonexistent/provision.toml")).unwrap_err();
    assert!(matches!(e, ProvisionError::Read { .. }));
    assert_eq!(e.to_string(), "cannot read /nonexistent/provision.toml");
}

#[test]
fn positions_count_characters() {
    let text = "a\nbé = 1\n";
    assert_eq!(Position::of(text, 0), Position { line: 1, column: 1 });
    assert_eq!(Position::of(text, 2), Position { line: 2, column: 1 });
    assert_eq!(Position::of(text, 5), Position { line: 2, column: 3 }, "é is one column");
    assert_eq!(Position::of(text, 4), Position { line: 2, column: 2 }, "inside é: its start");
}

#[test]
fn what_is_written_reads_back() {
    let t = token();
    let p = parse(path(), &spec_example(&t)).unwrap();
    let text = p.to_toml();
    assert_eq!(parse(path(), &text).unwrap(), p, "{text}");
}

fn host_port() -> impl Strategy<Value = String> {
    ("[a-z][a-z0-9-]{0,10}(\\.[a-z0-9]{1,5}){0,2}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}"))
}

proptest! {
    #[test]
    fn any_provision_round_trips(
        central in prop::collection::vec(
            ("https?", host_port(), "(/[a-z0-9]{1,5})?")
                .prop_map(|(s, h, p)| format!("{s}://{h}{p}")),
            1..4,
        ),
        insecure in prop::collection::vec(host_port(), 0..3),
        store in "[a-z0-9][a-z0-9-]{0,20}",
    ) {
        let p = Provision {
            central,
            token: EnrollToken::generate(&store, &"0f".repeat(32)),
            insecure_registries: insecure,
            registry_ca: BTreeMap::new(),
        };
        let text = p.to_toml();
        prop_assert_eq!(parse(path(), &text).unwrap(), p, "{}", text);
    }
}
