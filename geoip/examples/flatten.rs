//! `cargo run --release -p geoip --example flatten -- FILE.mmdb`: what
//! flattening a database gives (counts before and after merging, time).
use std::{path::PathBuf, time::Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: flatten FILE.mmdb")?
        .into();
    let t = Instant::now();
    let db = geoip::Database::open(&path)?;
    let opened = t.elapsed();
    let t = Instant::now();
    let tables = geoip::flatten(&db)?;
    let flattened = t.elapsed();
    let t = Instant::now();
    let layout = geoip::layout::V4Layout::build(&tables.v4)?;
    let laid = t.elapsed();
    println!("{} ({})", path.display(), db.version().label());
    println!("open+verify {opened:?}, flatten {flattened:?}, v4 layout {laid:?}");
    println!("{:#?}", tables.stats);
    println!(
        "v4 layout: {} level-2 blocks, {} level-3 blocks, {} KiB of arrays",
        layout.l2.len(),
        layout.l3.len(),
        layout.kernel_bytes() / 1024,
    );
    let mut lens = [0usize; 33];
    for (n, _) in &tables.v6 {
        if n.prefix_len() <= 32 {
            lens[n.prefix_len() as usize] += 1;
        }
    }
    let v6_le32: usize = lens.iter().sum();
    let v6_le48 = tables
        .v6
        .iter()
        .filter(|(n, _)| n.prefix_len() <= 48)
        .count();
    println!(
        "v6 prefixes <= /32: {v6_le32}, <= /48: {v6_le48}, total {}",
        tables.v6.len()
    );
    Ok(())
}
