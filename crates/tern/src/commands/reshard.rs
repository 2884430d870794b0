//! `tern reshard`: moving slots between shards while they serve, and the
//! migrations under way.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tern_client::reshard::{self, Pause, Progress, ReshardOptions};
use tern_client::{ClusterMap, ShardId};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReshardArgs {
    #[command(subcommand)]
    command: Option<ReshardCommand>,
    /// The shard the slots leave.
    #[arg(long)]
    from: Option<ShardId>,
    /// The shard the slots go to.
    #[arg(long)]
    to: Option<ShardId>,
    /// The slots to move: FIRST-LAST (inclusive) or one slot.
    #[arg(long, value_parser = parse_slots)]
    slots: Option<[u32; 2]>,
    /// Slots per group, held still and handed off at once.
    #[arg(long, default_value_t = ReshardOptions::default().group_slots)]
    group_slots: u32,
    /// At most this many keys moved per second (0: as fast as it goes):
    /// the workload keeps more of the machine, the move takes longer.
    #[arg(long, default_value_t = reshard::DEFAULT_MAX_KEYS_PER_S)]
    max_keys_per_s: u64,
    /// For fault drills: stop once after STEP of the first group for MS
    /// milliseconds (default 1000) and say so on standard error, so that a
    /// participant can be crashed right there. Steps: cleared, copied,
    /// writes-held, changes-installed, reads-held, handed-off, dropped.
    #[arg(long, value_name = "STEP[:MS]", value_parser = parse_pause)]
    pause_after: Option<Pause>,
}

#[derive(Debug, Subcommand)]
enum ReshardCommand {
    /// The migrations under way and how far each has got.
    Status,
    /// Stop migration ID: the groups handed off stay where they went.
    Cancel { id: u64 },
    /// Move slots until every shard owns an even share (counts differ by
    /// at most one; as few slots move as that allows), one migration after
    /// another: a shard just added gets its share, a shard with none left
    /// can be retired.
    ///
    /// With `--by load`: move slots until no shard does much more than its
    /// share of the work (within 5% of the mean), the work of each slot
    /// measured on every replica over `--load-window` first (reads answered,
    /// writes times the chain's length). Hot slots go from the busiest shard
    /// to the idlest, a contiguous run at a time; a single slot hotter than
    /// the gap stays whole.
    Rebalance {
        /// Slots per group, held still and handed off at once.
        #[arg(long, default_value_t = ReshardOptions::default().group_slots)]
        group_slots: u32,
        /// What to even out.
        #[arg(long, value_enum, default_value_t = By::Slots)]
        by: By,
        /// How long the load is measured before the plan (`--by load`).
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        load_window: f64,
        /// At most this many keys moved per second by each move (0: as
        /// fast as it goes).
        #[arg(long, default_value_t = reshard::DEFAULT_MAX_KEYS_PER_S)]
        max_keys_per_s: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum By {
    /// Slot counts.
    Slots,
    /// The requests each slot had lately.
    Load,
}

/// `STEP` or `STEP:MS`.
fn parse_pause(text: &str) -> Result<Pause, String> {
    let (step, ms) = text.split_once(':').unwrap_or((text, "1000"));
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("{ms:?} is not a number of milliseconds"))?;
    Ok(Pause {
        after: step.parse()?,
        duration: std::time::Duration::from_millis(ms),
    })
}

/// `FIRST-LAST` (inclusive) or `SLOT`, as `[first, last + 1)`.
fn parse_slots(text: &str) -> Result<[u32; 2], String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("{part:?} is not a slot number"))
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (number(first)?, number(last)?),
        None => {
            let slot = number(text)?;
            (slot, slot)
        }
    };
    if first > last || last >= tern_wire::SLOT_COUNT {
        return Err(format!(
            "slots {first}-{last} are not a range inside 0-{}",
            tern_wire::SLOT_COUNT - 1
        ));
    }
    Ok([first, last + 1])
}

pub fn run(map: &ClusterMap, args: ReshardArgs) -> Result<ExitCode> {
    if map.meta.is_empty() {
        bail!("this cluster map names no meta nodes: its slots cannot move");
    }
    match args.command {
        Some(ReshardCommand::Status) => {
            let migrations = reshard::status(&map.meta)?;
            if migrations.is_empty() {
                println!("no migration under way");
            }
            for m in migrations {
                println!(
                    "migration {}: shard {} -> shard {}, slots {}-{}, {}/{} groups handed off",
                    m.id,
                    m.from,
                    m.to,
                    m.slots[0],
                    m.slots[1] - 1,
                    m.handed_off.len(),
                    m.group_count()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ReshardCommand::Rebalance {
            group_slots,
            by,
            load_window,
            max_keys_per_s,
        }) => {
            let options = ReshardOptions {
                group_slots,
                max_keys_per_s: Some(max_keys_per_s),
                ..ReshardOptions::default()
            };
            let balance = match by {
                By::Slots => reshard::Balance::Slots,
                By::Load => {
                    if !(load_window > 0.0 && load_window <= 600.0) {
                        bail!("--load-window must be more than 0 and at most 600 seconds");
                    }
                    eprintln!("measuring the load for {load_window}s");
                    reshard::Balance::Load {
                        window: std::time::Duration::from_secs_f64(load_window),
                    }
                }
            };
            let mut progress = |step: &reshard::Move, p: &Progress| {
                if p.groups_done == p.groups {
                    eprintln!(
                        "slots {}-{} moved from shard {} to shard {}: {} keys in {:.2}s, longest write hold {:.1} ms",
                        step.slots[0],
                        step.slots[1] - 1,
                        step.from,
                        step.to,
                        p.keys,
                        p.elapsed.as_secs_f64(),
                        p.longest_hold.as_secs_f64() * 1e3
                    );
                }
            };
            let done = reshard::rebalance(&map.meta, options, balance, &mut progress)
                .context("rebalancing the slots")?;
            let shares = |loads: &[(ShardId, u64)]| -> String {
                let total: u64 = loads.iter().map(|(_, load)| load).sum::<u64>().max(1);
                loads
                    .iter()
                    .map(|(id, load)| {
                        format!("shard {id} {:.0}%", *load as f64 * 100.0 / total as f64)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !done.load_before.is_empty() {
                println!("load before: {}", shares(&done.load_before));
            }
            let slots: u32 = done
                .moves
                .iter()
                .map(|(m, _)| m.slots[1] - m.slots[0])
                .sum();
            let keys: u64 = done.moves.iter().map(|(_, report)| report.keys).sum();
            if done.moves.is_empty() {
                println!(
                    "the {} is even already: nothing moved",
                    match by {
                        By::Slots => "slot count",
                        By::Load => "load",
                    }
                );
            } else {
                if !done.load_after.is_empty() {
                    println!("load expected after: {}", shares(&done.load_after));
                }
                println!(
                    "rebalanced: {} moves, {slots} slots, {keys} keys",
                    done.moves.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ReshardCommand::Cancel { id }) => {
            reshard::cancel(&map.meta, id).with_context(|| format!("cancelling migration {id}"))?;
            println!("migration {id} cancelled: the groups handed off stay at the destination");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (Some(from), Some(to), Some(slots)) = (args.from, args.to, args.slots) else {
                bail!("give --from, --to and --slots (or `status`, `cancel ID`)");
            };
            let options = ReshardOptions {
                group_slots: args.group_slots,
                max_keys_per_s: Some(args.max_keys_per_s),
                pause: args.pause_after,
                ..ReshardOptions::default()
            };
            let mut every = 0u32;
            let mut progress = |p: &Progress| {
                every += 1;
                if every.is_multiple_of(64) || p.groups_done == p.groups {
                    let rate = p.keys as f64 / p.elapsed.as_secs_f64().max(1e-9);
                    let left = p.elapsed.mul_f64(
                        f64::from(p.groups - p.groups_done) / f64::from(p.groups_done.max(1)),
                    );
                    eprintln!(
                        "migration {}: {}/{} groups, {} keys ({rate:.0} keys/s), ETA {:.1}s, longest write hold {:.1} ms",
                        p.migration,
                        p.groups_done,
                        p.groups,
                        p.keys,
                        left.as_secs_f64(),
                        p.longest_hold.as_secs_f64() * 1e3
                    );
                }
            };
            let report = reshard::reshard(&map.meta, from, to, slots, options, &mut progress)
                .with_context(|| {
                    format!(
                        "moving slots {}-{} from shard {from} to shard {to}",
                        slots[0],
                        slots[1] - 1
                    )
                })?;
            let p99 = report.hold_p99();
            println!(
                "moved slots {}-{} from shard {from} to shard {to}: migration {}, {} groups, {} keys, {} outcomes, {:.1} MB in {:.2}s; write hold p99 {:.2} ms, longest {:.2} ms; {} groups started again",
                slots[0],
                slots[1] - 1,
                report.migration,
                report.groups,
                report.keys,
                report.outcomes,
                report.bytes as f64 / 1e6,
                report.elapsed.as_secs_f64(),
                p99.as_secs_f64() * 1e3,
                report.longest_hold().as_secs_f64() * 1e3,
                report.restarts
            );
            let time = report.time_per_group();
            println!(
                "time per group: first copy {:.2} ms; held: draining {:.2} ms, exporting the changes {:.2} ms, installing them {:.2} ms, handing off {:.2} ms",
                time.copying_ms,
                time.draining_ms,
                time.exporting_ms,
                time.installing_ms,
                time.handing_off_ms,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
