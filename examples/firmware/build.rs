//! Turns `ca.pem` into DER at build time: the firmware then needs neither a PEM decoder nor a
//! RAM buffer for the CA certificate (it stays in flash).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=ca.pem");
    let text = std::fs::read("ca.pem").expect("ca.pem (the relay's CA) in this directory");
    let pem = pem::parse(text).expect("ca.pem holds a PEM certificate");
    assert_eq!(pem.tag(), "CERTIFICATE", "ca.pem must hold a CERTIFICATE");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("ca.der");
    std::fs::write(out, pem.contents()).expect("write ca.der");
}
