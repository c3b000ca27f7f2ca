//! HTTP request parsing: the control server's head parser (`http::parse`,
//! httparse underneath) and the query decoding of `http::Request::new`.
//!
//! Checked: no panic on any bytes; a request that is whole (answered or
//! refused) stays so whatever follows it on the connection (the server
//! parses each longer prefix as reads arrive and answers the first whole
//! one); a refusal is a 400 or a 405 with a JSON error; a request's path
//! and query put back together parse to the same request; the decoded
//! pairs, encoded again, decode to the same pairs; `param` gives the last
//! value of a repeated name. The same checks on `Request::new` fed the
//! bytes as a target directly.
#![no_main]

use hongbao::http::{Parsed, Request, parse};
use libfuzzer_sys::fuzz_target;

fn check_request(req: &Request) {
    assert!(!req.path().contains('?'), "the path ends at the first '?'");
    // The bearer token comes from a header, not the target: carried over.
    let mut again = Request::new(&format!("{}?{}", req.path(), req.query()));
    if let Some(token) = req.bearer() {
        again = again.with_bearer(token);
    }
    assert_eq!(&again, req, "path and query put back together");
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(req.params())
        .finish();
    let decoded = Request::new(&format!("/?{encoded}"));
    assert_eq!(decoded.params(), req.params(), "pairs encoded again");
    for (k, _) in req.params() {
        let last = req
            .params()
            .iter()
            .rev()
            .find(|(k2, _)| k2 == k)
            .map(|(_, v)| v.as_str());
        assert_eq!(req.param(k), last, "a repeated name gives its last value");
    }
}

fuzz_target!(|bytes: &[u8]| {
    let parsed = parse(bytes);
    match &parsed {
        Parsed::Partial => {}
        Parsed::Get(req) => check_request(req),
        Parsed::Refused(r) => {
            assert!(r.status == 400 || r.status == 405, "status {}", r.status);
            assert!(r.body["error"].is_string(), "a JSON error: {}", r.body);
        }
    }
    if !matches!(parsed, Parsed::Partial) {
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"GET /more HTTP/1.1\r\n\r\n\x00\xff");
        assert_eq!(
            parse(&longer),
            parsed,
            "a whole head does not depend on what follows"
        );
    }
    check_request(&Request::new(&String::from_utf8_lossy(bytes)));
});
