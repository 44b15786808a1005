//! The store on disk: a `FORMAT` file naming its version, and an fjall database of channel records and publications, written in atomic batches and read back whole at start-up.
//!
//! Layout of `data_dir`:
//!
//! - `FORMAT`: `herald store format 1` and the herald version that made it.
//!   A store of another format is refused at start-up with both versions
//!   named, before anything is opened.
//! - `db/`: the fjall database, two keyspaces:
//!   - `channels`: channel name → its epoch (8 hex digits);
//!   - `publications`: channel name, a zero byte, the epoch (4 bytes) and
//!     the offset (8 bytes, big-endian) → when it was published (Unix
//!     milliseconds, 8 bytes, big-endian) and the data (raw JSON).
//!
//! Keys sort by channel, then epoch, then offset, so one channel's history
//! is one contiguous range and reads back in order. Channel names never
//! hold a zero byte (`[A-Za-z0-9_:.@#=,$-]`), so the name ends where it is.

use crate::config::Durability;
use crate::types::Epoch;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The format this build writes, and the only one it reads.
pub const FORMAT: u32 = 1;
/// The file that names a store's format.
pub const FORMAT_FILE: &str = "FORMAT";
/// The database's directory inside `data_dir`.
const DATABASE_DIR: &str = "db";
/// Bytes of a publication key after the name: a zero byte, the epoch, the offset.
const KEY_TAIL: usize = 1 + 4 + 8;
/// Bytes of a publication value before the data: when it was published.
const VALUE_HEAD: usize = 8;
/// Memory fjall gives each keyspace's write buffer before flushing it to a
/// table on disk. herald keeps history in RAM anyway and reads the store
/// only at start-up: a small buffer keeps the journal short.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// fjall's block cache: only start-up reads go through it.
const CACHE_BYTES: u64 = 8 << 20;

/// One publication as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublication {
    /// Its offset in the channel.
    pub offset: u64,
    /// When it was published, in Unix milliseconds.
    pub at: u64,
    /// The data, raw JSON.
    pub data: Bytes,
}

/// One channel as stored: its epoch and its publications, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChannel {
    /// The channel's name.
    pub name: String,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its publications of that epoch, by offset.
    pub publications: Vec<StoredPublication>,
}

/// What a read found that belongs to no channel (left over by a crash
/// between batches of an older layout, or by hand): to remove.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Channel records without a publication.
    pub channels: Vec<String>,
    /// Publication keys of no channel, or of an epoch their channel no
    /// longer has, or that do not parse.
    pub publications: Vec<Vec<u8>>,
}

/// An open store.
pub struct Store {
    dir: PathBuf,
    database: Database,
    channels: Keyspace,
    publications: Keyspace,
    sync: PersistMode,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).field("sync", &self.sync).finish()
    }
}

/// Changes committed together, atomically: all of them or none.
pub struct Batch {
    batch: OwnedWriteBatch,
    channels: Keyspace,
    publications: Keyspace,
    /// Publications put, for the caller's counts.
    puts: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("items", &self.batch.len()).finish()
    }
}

impl Batch {
    /// Records `name`'s epoch (a new channel, or one made anew).
    pub fn put_channel(&mut self, name: &str, epoch: Epoch) {
        self.batch.insert(&self.channels, name.as_bytes(), epoch.as_str().as_bytes());
    }

    /// Forgets `name`'s record (its publications are removed one by one).
    pub fn remove_channel(&mut self, name: &str) {
        self.batch.remove(&self.channels, name.as_bytes());
    }

    /// Stores a publication.
    pub fn put_publication(&mut self, name: &str, epoch: Epoch, offset: u64, at: u64, data: &[u8]) {
        let mut value = Vec::with_capacity(VALUE_HEAD + data.len());
        value.extend_from_slice(&at.to_be_bytes());
        value.extend_from_slice(data);
        self.batch.insert(&self.publications, publication_key(name, epoch, offset), value);
        self.puts += 1;
    }

    /// Removes a publication.
    pub fn remove_publication(&mut self, name: &str, epoch: Epoch, offset: u64) {
        self.batch.remove(&self.publications, publication_key(name, epoch, offset));
    }

    /// Removes a publication by its raw key (a leftover).
    pub fn remove_key(&mut self, key: &[u8]) {
        self.batch.remove(&self.publications, key.to_vec());
    }

    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Publications put so far.
    pub fn puts(&self) -> usize {
        self.puts
    }
}

impl Store {
    /// Opens the store in `dir`, making it if `dir` is missing or empty.
    /// Refuses a directory that holds something else, a store of another
    /// format, or one another process has open, with a message that says
    /// which and what to do.
    pub fn open(dir: &Path, durability: Durability) -> Result<Store, String> {
        check_format(dir)?;
        let path = dir.join(DATABASE_DIR);
        let database =
            Database::builder(&path).cache_size(CACHE_BYTES).open().map_err(|error| {
                format!("cannot open the store in {}: {}", dir.display(), describe(&error))
            })?;
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let keyspace = |name: &str| {
            database.keyspace(name, options).map_err(|error| {
                format!("cannot open the store in {}: {}", dir.display(), describe(&error))
            })
        };
        let channels = keyspace("channels")?;
        let publications = keyspace("publications")?;
        let sync = match durability {
            Durability::Fsync => PersistMode::SyncData,
            Durability::PageCache => PersistMode::Buffer,
        };
        Ok(Store { dir: dir.to_path_buf(), database, channels, publications, sync })
    }

    /// The directory the store is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty batch.
    pub fn batch(&self) -> Batch {
        Batch {
            batch: self.database.batch(),
            channels: self.channels.clone(),
            publications: self.publications.clone(),
            puts: 0,
        }
    }

    /// Writes `batch` atomically and, by the store's durability, waits for
    /// the disk (`fdatasync`) or only hands it to the operating system.
    pub fn commit(&self, batch: Batch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.batch.durability(Some(self.sync)).commit().map_err(|error| describe(&error))
    }

    /// Reads every channel back, one at a time in name order, handing each
    /// to `each`; returns what belongs to no channel. A store that cannot
    /// be read (a damaged file) is an error: nothing stored is dropped
    /// silently.
    pub fn read(&self, mut each: impl FnMut(StoredChannel)) -> Result<Leftovers, String> {
        let damaged = |error: fjall::Error| {
            format!(
                "cannot read the store in {}: {} (move the directory away to start without it)",
                self.dir.display(),
                describe(&error)
            )
        };
        let mut epochs: HashMap<String, Epoch> = HashMap::new();
        let mut leftovers = Leftovers::default();
        for item in self.channels.iter() {
            let (key, value) = item.into_inner().map_err(damaged)?;
            let name = std::str::from_utf8(&key).ok().map(str::to_string);
            let epoch = std::str::from_utf8(&value).ok().and_then(Epoch::parse);
            match (name, epoch) {
                (Some(name), Some(epoch)) => {
                    epochs.insert(name, epoch);
                }
                _ => leftovers.channels.push(String::from_utf8_lossy(&key).into_owned()),
            }
        }
        let mut current: Option<StoredChannel> = None;
        for item in self.publications.iter() {
            let (key, value) = item.into_inner().map_err(damaged)?;
            let Some((name, epoch, offset)) = parse_publication_key(&key) else {
                leftovers.publications.push(key.to_vec());
                continue;
            };
            if epochs.get(name) != Some(&epoch) || value.len() < VALUE_HEAD {
                leftovers.publications.push(key.to_vec());
                continue;
            }
            let (at, data) = value.split_at(VALUE_HEAD);
            let at = u64::from_be_bytes(at.try_into().unwrap_or([0; 8]));
            let publication = StoredPublication { offset, at, data: Bytes::copy_from_slice(data) };
            match &mut current {
                Some(channel) if channel.name == name => channel.publications.push(publication),
                _ => {
                    if let Some(done) = current.take() {
                        epochs.remove(&done.name);
                        each(done);
                    }
                    current = Some(StoredChannel {
                        name: name.to_string(),
                        epoch,
                        publications: vec![publication],
                    });
                }
            }
        }
        if let Some(done) = current.take() {
            epochs.remove(&done.name);
            each(done);
        }
        leftovers.channels.extend(epochs.into_keys());
        Ok(leftovers)
    }

    /// Bytes the store takes on disk (the database's tables and journals).
    pub fn disk_bytes(&self) -> u64 {
        self.database.disk_space().unwrap_or(0)
    }
}

/// `name`, a zero byte, the epoch, the offset.
fn publication_key(name: &str, epoch: Epoch, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + KEY_TAIL);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&epoch_bytes(epoch));
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// The name, epoch and offset of a publication key.
fn parse_publication_key(key: &[u8]) -> Option<(&str, Epoch, u64)> {
    let split = key.len().checked_sub(KEY_TAIL)?;
    let (name, tail) = key.split_at(split);
    let (zero, rest) = tail.split_first()?;
    if *zero != 0 || name.is_empty() {
        return None;
    }
    let (epoch, offset) = rest.split_at(4);
    let epoch = Epoch::from_u32(u32::from_be_bytes(epoch.try_into().ok()?));
    let offset = u64::from_be_bytes(offset.try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, epoch, offset))
}

/// An epoch's eight hex digits as four bytes.
fn epoch_bytes(epoch: Epoch) -> [u8; 4] {
    u32::from_str_radix(epoch.as_str(), 16).unwrap_or(0).to_be_bytes()
}

/// What went wrong, in words an operator can act on.
fn describe(error: &fjall::Error) -> String {
    match error {
        fjall::Error::Io(error) => error.to_string(),
        fjall::Error::Locked => {
            "another process has it open (two herald processes cannot share a data_dir)".into()
        }
        fjall::Error::Poisoned => "an earlier write failed; it is reopened before the next".into(),
        other => format!("{other:?}"),
    }
}

/// The `FORMAT` file's text for this build.
fn format_text() -> String {
    format!("herald store format {FORMAT}\nwritten by herald {}\n", env!("CARGO_PKG_VERSION"))
}

/// Checks `dir`'s `FORMAT` file, or makes the store's directory and the
/// file when `dir` is missing or empty.
fn check_format(dir: &Path) -> Result<(), String> {
    let file = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let version = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("herald store format "))
                .and_then(|number| number.trim().parse::<u32>().ok());
            let writer = text
                .lines()
                .find_map(|line| line.strip_prefix("written by "))
                .unwrap_or("an unknown herald");
            match version {
                Some(FORMAT) => Ok(()),
                Some(version) => Err(format!(
                    "the store in {} has format {version} (written by {writer}); this build \
                     (herald {}) reads format {FORMAT} only: {}",
                    dir.display(),
                    env!("CARGO_PKG_VERSION"),
                    if version < FORMAT {
                        "it was written by an older herald; start that version on it, or move \
                         the directory away to start with an empty store"
                    } else {
                        "it was written by a newer herald; run that version, or move the \
                         directory away to start with an empty store"
                    }
                )),
                None => Err(format!(
                    "{} does not name a herald store format (expected a first line \
                     `herald store format N`): move the directory away, or give data_dir an \
                     empty one",
                    file.display()
                )),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let empty = match std::fs::read_dir(dir) {
                Ok(mut entries) => entries.next().is_none(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
                Err(error) => {
                    return Err(format!("cannot read data_dir {}: {error}", dir.display()));
                }
            };
            if !empty {
                return Err(format!(
                    "data_dir {} holds files but no herald store (no {FORMAT_FILE} file): give it \
                     an empty or new directory",
                    dir.display()
                ));
            }
            create(dir)
                .map_err(|error| format!("cannot make the store in {}: {error}", dir.display()))
        }
        Err(error) => Err(format!("cannot read {}: {error}", file.display())),
    }
}

/// Makes `dir` and its `FORMAT` file, durably (written, synced, renamed
/// into place, the directory synced).
fn create(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{FORMAT_FILE}.new"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(format_text().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(FORMAT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}
