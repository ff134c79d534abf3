//! `mqtt-proxy-operator`: placeholder until the controller lands (next commits).

fn main() {
    eprintln!("mqtt-proxy-operator: the controller is not built yet");
    std::process::exit(1);
}
