fn main() {
    let mut p = sonde::probes::Probes::load(&Default::default()).unwrap();
    for s in &p.report { println!("{} {:?}", s.hook, s.state); }
    let _ = p.take_events();
}
