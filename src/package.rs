//! Module packages: the XML interchange format of the add-in-module seed
//! (PROTOCOL.md §16), written from an update in the store and read back into files
//! ready to publish.
//!
//! Owns the format and its limits. Writing streams file by file: each file's content is
//! gzip-compressed and base64-encoded in `<data>` blocks of bounded size, so memory stays
//! flat whatever the module's size, and the same update always gives the same bytes.
//! Reading streams too, and trusts nothing: no DTD (so no entity expansion, internal or
//! external), no unknown element, attribute or entity, every name and path checked as a
//! manifest's are, each element and the whole document bounded, and each file's content
//! checked against its declared size (decompression stops as soon as it is passed) and
//! blake3. Files are unpacked into a fresh directory, which `publish` then takes like any
//! input, so nothing is published unless the whole package is valid.

use crate::content::Hash;
use crate::content::manifest::{MAX_FILES, MODE_MASK};
use crate::content::names::{self, NameError};
use crate::export::{self, ExportError};
use crate::node::Node;
use crate::publish::{PublishError, PublishOutcome, PublishRequest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use quick_xml::events::{BytesStart, Event};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The format version this code writes and reads.
pub const FORMAT: &str = "1";
/// Compressed bytes per `<data>` element: a multiple of 3, so each block is whole
/// base64 quads and decodes on its own.
const DATA_BLOCK: usize = 768 * 1024;
/// Base64 characters per line inside `<data>`.
const LINE: usize = 76;
/// The largest single piece of markup or text a reader accepts: a `<data>` block with
/// its line breaks, with room to spare.
const MAX_EVENT_BYTES: u64 = 2 * 1024 * 1024;

/// How much a package may make a reader do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole document, in bytes.
    pub max_document: u64,
    /// The files' declared sizes added up.
    pub max_unpacked: u64,
    /// How many files; never more than a manifest may list ([`MAX_FILES`]).
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_document: 16 << 30,
            max_unpacked: 64 << 30,
            max_files: MAX_FILES,
        }
    }
}

/// Why a package could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the package is refused at byte {at}: {why}")]
    Refused { at: u64, why: String },
    #[error("the package is refused: {0}")]
    Name(#[from] NameError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Reading the update from the store failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PackageError + 'a {
    move |source| PackageError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// Writes update `id` of `node`'s store as a package to `out`.
pub fn export(node: &Node, id: &Hash, out: &mut impl Write, now: u64) -> Result<(), PackageError> {
    let signed = export::stored_manifest(node, id, now)?;
    let m = &signed.manifest;
    let to = Path::new("the package");
    let mut w = |s: &str| out.write_all(s.as_bytes()).map_err(io_err("write", to));
    w("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")?;
    w(&format!("<arbor-package format=\"{FORMAT}\">\n"))?;
    w(&format!(
        "  <module tenant=\"{}\" category=\"{}\" id=\"{}\" version=\"{}\" created=\"{}\"/>\n",
        esc(&m.tenant),
        esc(&m.category),
        esc(&m.id),
        esc(&m.version),
        m.created
    ))?;
    if let Some(d) = &m.description {
        w(&format!("  <description>{}</description>\n", esc(d)))?;
    }
    if let Some(argv) = &m.post_install {
        w("  <post-install>\n")?;
        for arg in argv {
            w(&format!("    <arg>{}</arg>\n", esc(arg)))?;
        }
        w("  </post-install>\n")?;
    }
    let mut buf = Vec::new();
    for file in &m.files {
        // The file's blake3 comes first in the element: hash it from the store first.
        let mut hasher = blake3::Hasher::new();
        for c in &file.chunks {
            export::read_chunk(node, &c.hash(), &file.path, &mut buf)?;
            hasher.update(&buf);
        }
        out.write_all(
            format!(
                "  <file path=\"{}\" mode=\"{:o}\" size=\"{}\" blake3=\"{}\">\n",
                esc(&file.path),
                file.mode,
                file.size,
                hasher.finalize().to_hex()
            )
            .as_bytes(),
        )
        .map_err(io_err("write", to))?;
        let mut gz = flate2::GzBuilder::new().write(
            DataBlocks {
                out: &mut *out,
                block: Vec::with_capacity(DATA_BLOCK),
                emitted: false,
            },
            flate2::Compression::default(),
        );
        for c in &file.chunks {
            export::read_chunk(node, &c.hash(), &file.path, &mut buf)?;
            gz.write_all(&buf).map_err(io_err("write", to))?;
        }
        gz.finish()
            .and_then(DataBlocks::finish)
            .map_err(io_err("write", to))?;
        out.write_all(b"  </file>\n").map_err(io_err("write", to))?;
    }
    out.write_all(b"</arbor-package>\n")
        .and_then(|()| out.flush())
        .map_err(io_err("write", to))
}

/// XML-escapes text for an attribute or element.
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// Cuts compressed bytes into `<data>` elements of base64 lines.
struct DataBlocks<W: Write> {
    out: W,
    block: Vec<u8>,
    emitted: bool,
}

impl<W: Write> DataBlocks<W> {
    fn emit(&mut self) -> io::Result<()> {
        let text = BASE64.encode(&self.block);
        self.out.write_all(b"    <data>\n")?;
        for line in text.as_bytes().chunks(LINE) {
            self.out.write_all(line)?;
            self.out.write_all(b"\n")?;
        }
        self.out.write_all(b"    </data>\n")?;
        self.block.clear();
        self.emitted = true;
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        if !self.block.is_empty() || !self.emitted {
            self.emit()?;
        }
        Ok(())
    }
}

impl<W: Write> Write for DataBlocks<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DATA_BLOCK - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        if self.block.len() == DATA_BLOCK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Imports a package on the root `node`: unpacks it into a temporary directory inside the
/// node directory, then publishes it with the package's creation time, so the manifest
/// is the one the package was written from (or `already_published` if this root has
/// it). Nothing is stored unless the whole package is valid; the temporary directory is
/// always removed.
pub fn import(
    node: &Node,
    input: impl Read,
    limits: Limits,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PublishOutcome, PackageError> {
    // Only a root publishes: refuse before unpacking anything.
    node.root_secret().map_err(PublishError::from)?;
    let (req, _dir) = unpack_temp(input, &node.dir, limits)?;
    let created = req.created.unwrap_or_default();
    Ok(crate::publish::publish(node, &req, created, progress)?)
}

/// [`unpack`] into a new temporary directory inside `parent` (a node directory, where a
/// running daemon can read the files too), removed when the returned handle drops,
/// or at once if the package is refused.
pub fn unpack_temp(
    input: impl Read,
    parent: &Path,
    limits: Limits,
) -> Result<(PublishRequest, tempfile::TempDir), PackageError> {
    let dir = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(parent)
        .map_err(io_err("make a temporary directory in", parent))?;
    let req = unpack(input, dir.path(), limits)?;
    Ok((req, dir))
}

/// Reads a package from `input` and unpacks its files into the directory `into` (new or
/// empty); returns what to publish them as, `path` set to `into` and `created` to the
/// package's time. Nothing is left half-written that the caller would publish: on an
/// error, `into` holds junk to remove.
pub fn unpack(
    input: impl Read,
    into: &Path,
    limits: Limits,
) -> Result<PublishRequest, PackageError> {
    let budget = Rc::new(Budget {
        pos: Cell::new(0),
        stop_at: Cell::new(0),
        max_document: limits.max_document,
    });
    let mut reader = quick_xml::Reader::from_reader(Bounded {
        inner: BufReader::new(input),
        budget: budget.clone(),
    });
    reader.config_mut().check_end_names = true;
    let mut p = Parser {
        into: into.to_path_buf(),
        limits,
        budget,
        files: BTreeSet::new(),
        dirs: BTreeSet::new(),
        unpacked: 0,
    };
    p.document(&mut reader)
}

/// How far a reader has got, and how far it may go.
struct Budget {
    pos: Cell<u64>,
    /// Where the current event must end.
    stop_at: Cell<u64>,
    max_document: u64,
}

/// A `BufRead` that refuses to read past the current event's or the document's limit,
/// so that no single piece of markup or text can make the parser buffer without bound.
struct Bounded<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: BufRead> Read for Bounded<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Bounded<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let pos = self.budget.pos.get();
        if pos >= self.budget.max_document {
            return Err(io::Error::other(format!(
                "the document is over its limit of {} bytes",
                self.budget.max_document
            )));
        }
        let stop = self.budget.stop_at.get().min(self.budget.max_document);
        if pos >= stop {
            return Err(io::Error::other(format!(
                "an element or text is over {MAX_EVENT_BYTES} bytes"
            )));
        }
        let room = usize::try_from(stop - pos).unwrap_or(usize::MAX);
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(room)])
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.budget.pos.set(self.budget.pos.get() + n as u64);
    }
}

type XmlReader<R> = quick_xml::Reader<Bounded<BufReader<R>>>;

struct Parser {
    into: PathBuf,
    limits: Limits,
    budget: Rc<Budget>,
    files: BTreeSet<String>,
    dirs: BTreeSet<String>,
    unpacked: u64,
}

/// One step of the document, with text already resolved.
enum Step {
    Open(String, Vec<(String, String)>),
    /// An element without content (`<x/>`).
    Empty(String, Vec<(String, String)>),
    Close(String),
    Text(String),
    End,
}

impl Parser {
    fn refuse(&self, why: impl Into<String>) -> PackageError {
        PackageError::Refused {
            at: self.budget.pos.get(),
            why: why.into(),
        }
    }

    /// The next step; comments and the XML declaration are skipped, whitespace between
    /// elements comes back as text.
    fn next<R: Read>(
        &self,
        reader: &mut XmlReader<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Step, PackageError> {
        loop {
            buf.clear();
            self.budget
                .stop_at
                .set(self.budget.pos.get().saturating_add(MAX_EVENT_BYTES));
            let event = reader
                .read_event_into(buf)
                .map_err(|e| self.refuse(e.to_string()))?;
            return Ok(match event {
                Event::Decl(_) | Event::Comment(_) => continue,
                Event::DocType(_) => {
                    return Err(self.refuse(
                        "a DOCTYPE is not allowed: packages declare no DTD and no entities",
                    ));
                }
                Event::PI(_) => return Err(self.refuse("processing instructions are not allowed")),
                Event::CData(_) => return Err(self.refuse("CDATA sections are not allowed")),
                Event::Start(e) => Step::Open(self.name(&e)?, self.attributes(&e)?),
                Event::Empty(e) => Step::Empty(self.name(&e)?, self.attributes(&e)?),
                Event::End(e) => {
                    Step::Close(String::from_utf8_lossy(e.name().as_ref()).into_owned())
                }
                Event::Text(t) => Step::Text(
                    t.decode()
                        .map_err(|e| self.refuse(format!("text is not UTF-8: {e}")))?
                        .into_owned(),
                ),
                Event::GeneralRef(r) => {
                    let name = r
                        .decode()
                        .map_err(|e| self.refuse(format!("a reference is not UTF-8: {e}")))?
                        .into_owned();
                    let text = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| {
                                self.refuse(format!(
                                    "unknown entity &{name}; (only the five XML entities are defined)"
                                ))
                            })?
                            .to_string(),
                        Err(e) => return Err(self.refuse(format!("bad reference &{name};: {e}"))),
                    };
                    Step::Text(text)
                }
                Event::Eof => Step::End,
            });
        }
    }

    fn name(&self, e: &BytesStart<'_>) -> Result<String, PackageError> {
        String::from_utf8(e.name().as_ref().to_vec())
            .map_err(|_| self.refuse("an element name is not UTF-8"))
    }

    fn attributes(&self, e: &BytesStart<'_>) -> Result<Vec<(String, String)>, PackageError> {
        e.attributes()
            .map(|a| {
                let a = a.map_err(|e| self.refuse(format!("bad attribute: {e}")))?;
                let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                let value = a
                    .unescape_value()
                    .map_err(|e| self.refuse(format!("attribute {key}: {e}")))?
                    .into_owned();
                Ok((key, value))
            })
            .collect()
    }

    /// Skips whitespace; anything else between elements is refused.
    fn element<R: Read>(
        &self,
        reader: &mut XmlReader<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Step, PackageError> {
        loop {
            match self.next(reader, buf)? {
                Step::Text(t) if t.trim().is_empty() => continue,
                Step::Text(t) => {
                    return Err(self.refuse(format!(
                        "unexpected text {:?} between elements",
                        t.trim().chars().take(40).collect::<String>()
                    )));
                }
                step => return Ok(step),
            }
        }
    }

    /// The text of an element up to its end tag, at most `limit` bytes.
    fn text<R: Read>(
        &self,
        reader: &mut XmlReader<R>,
        buf: &mut Vec<u8>,
        element: &str,
        limit: usize,
    ) -> Result<String, PackageError> {
        let mut out = String::new();
        loop {
            match self.next(reader, buf)? {
                Step::Text(t) => out.push_str(&t),
                Step::Close(name) if name == element => return Ok(out),
                _ => return Err(self.refuse(format!("<{element}> may hold only text"))),
            }
            if out.len() > limit {
                return Err(self.refuse(format!("<{element}> is over {limit} bytes")));
            }
        }
    }

    fn document<R: Read>(
        &mut self,
        reader: &mut XmlReader<R>,
    ) -> Result<PublishRequest, PackageError> {
        let mut buf = Vec::new();
        match self.element(reader, &mut buf)? {
            Step::Open(name, attrs) if name == "arbor-package" => {
                let format = take_attrs(self, &name, attrs, &["format"])?;
                if format[0] != FORMAT {
                    return Err(self.refuse(format!(
                        "format {:?} is not known here; this arbor reads format {FORMAT}",
                        format[0]
                    )));
                }
            }
            Step::End => return Err(self.refuse("the document is empty")),
            _ => return Err(self.refuse("the document is not an <arbor-package>")),
        }
        let module = match self.element(reader, &mut buf)? {
            Step::Empty(name, attrs) if name == "module" => take_attrs(
                self,
                &name,
                attrs,
                &["tenant", "category", "id", "version", "created"],
            )?,
            _ => return Err(self.refuse("<module .../> must come first in <arbor-package>")),
        };
        let created: u64 = module[4]
            .parse()
            .map_err(|_| self.refuse(format!("created {:?} is not Unix seconds", module[4])))?;
        let mut req = PublishRequest {
            tenant: module[0].clone(),
            category: module[1].clone(),
            id: module[2].clone(),
            version: module[3].clone(),
            description: None,
            path: self.into.clone(),
            follow_symlinks: false,
            post_install: None,
            created: Some(created),
        };
        let mut files = 0usize;
        loop {
            match self.element(reader, &mut buf)? {
                Step::Open(name, attrs) if name == "description" => {
                    take_attrs(self, &name, attrs, &[])?;
                    if req.description.is_some() || files > 0 || req.post_install.is_some() {
                        return Err(self.refuse("<description> must come once, after <module>"));
                    }
                    let d = self.text(reader, &mut buf, &name, names::MAX_DESCRIPTION_LEN)?;
                    names::check_description(&d)?;
                    req.description = Some(d);
                }
                Step::Open(name, attrs) if name == "post-install" => {
                    take_attrs(self, &name, attrs, &[])?;
                    if req.post_install.is_some() || files > 0 {
                        return Err(self.refuse("<post-install> must come once, before the files"));
                    }
                    req.post_install = Some(self.post_install(reader, &mut buf)?);
                }
                Step::Open(name, attrs) if name == "file" => {
                    files += 1;
                    let max = self.limits.max_files.min(MAX_FILES);
                    if files > max {
                        return Err(self.refuse(format!("more than {max} files")));
                    }
                    self.file(reader, &mut buf, attrs)?;
                }
                Step::Close(name) if name == "arbor-package" => break,
                Step::Empty(name, _)
                    if ["file", "description", "post-install"].contains(&name.as_str()) =>
                {
                    return Err(self.refuse(format!("<{name}/> is empty")));
                }
                Step::Open(name, _) | Step::Empty(name, _) => {
                    return Err(self.refuse(format!("unknown element <{name}>")));
                }
                _ => return Err(self.refuse("the document ends before </arbor-package>")),
            }
        }
        match self.element(reader, &mut buf)? {
            Step::End => {}
            _ => return Err(self.refuse("something follows </arbor-package>")),
        }
        if files == 0 {
            return Err(self.refuse("the package holds no files"));
        }
        names::check_module(
            &req.tenant,
            &req.category,
            &req.id,
            &req.version,
            req.description.as_deref(),
        )?;
        Ok(req)
    }

    fn post_install<R: Read>(
        &self,
        reader: &mut XmlReader<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<String>, PackageError> {
        let mut argv = Vec::new();
        loop {
            match self.element(reader, buf)? {
                Step::Open(name, attrs) if name == "arg" => {
                    take_attrs(self, &name, attrs, &[])?;
                    if argv.len() == names::MAX_HOOK_ARGS {
                        return Err(self.refuse(format!(
                            "more than {} words in <post-install>",
                            names::MAX_HOOK_ARGS
                        )));
                    }
                    argv.push(self.text(reader, buf, &name, names::MAX_HOOK_ARG_LEN)?);
                }
                Step::Empty(name, attrs) if name == "arg" => {
                    take_attrs(self, &name, attrs, &[])?;
                    argv.push(String::new());
                }
                Step::Close(name) if name == "post-install" => break,
                _ => return Err(self.refuse("<post-install> may hold only <arg> elements")),
            }
        }
        names::check_post_install(&argv)?;
        Ok(argv)
    }

    /// Unpacks one `<file>`: checks its path, decodes its `<data>` blocks into the
    /// file, and checks its size and blake3.
    fn file<R: Read>(
        &mut self,
        reader: &mut XmlReader<R>,
        buf: &mut Vec<u8>,
        attrs: Vec<(String, String)>,
    ) -> Result<(), PackageError> {
        let a = take_attrs(self, "file", attrs, &["path", "mode", "size", "blake3"])?;
        let path = a[0].clone();
        names::check_rel_path(&path)?;
        let mode = u32::from_str_radix(&a[1], 8)
            .ok()
            .filter(|m| m & !MODE_MASK == 0)
            .ok_or_else(|| {
                self.refuse(format!(
                    "file {path:?}: mode {:?} is not octal 0 to 777",
                    a[1]
                ))
            })?;
        let size: u64 = a[2]
            .parse()
            .map_err(|_| self.refuse(format!("file {path:?}: size {:?} is not a number", a[2])))?;
        let blake3: Hash = a[3].parse().map_err(|_| {
            self.refuse(format!(
                "file {path:?}: blake3 {:?} is not 64 hex digits",
                a[3]
            ))
        })?;
        if !self.files.insert(path.clone()) {
            return Err(self.refuse(format!("file {path:?} appears twice")));
        }
        // A path may not be both a file and a directory ("a" and "a/b").
        let mut clash = self.dirs.contains(&path).then(|| path.clone());
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            if self.files.contains(dir) {
                clash = Some(dir.to_string());
            }
            self.dirs.insert(dir.to_string());
            parent = dir;
        }
        if let Some(clash) = clash {
            return Err(self.refuse(format!("{clash:?} is both a file and a directory")));
        }
        self.unpacked = self.unpacked.saturating_add(size);
        if self.unpacked > self.limits.max_unpacked {
            return Err(self.refuse(format!(
                "the files add up to more than the limit of {} bytes",
                self.limits.max_unpacked
            )));
        }
        let target = self.into.join(&path);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(io_err("create", &target))?;
        let mut gz = flate2::write::GzDecoder::new(Sized {
            file,
            left: size,
            hasher: blake3::Hasher::new(),
        });
        let mut blocks = 0usize;
        loop {
            match self.element(reader, buf)? {
                Step::Open(name, attrs) if name == "data" => {
                    blocks += 1;
                    take_attrs(self, &name, attrs, &[])?;
                    let text = self.text(reader, buf, &name, MAX_EVENT_BYTES as usize)?;
                    let compact: Vec<u8> =
                        text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                    let bytes = BASE64
                        .decode(&compact)
                        .map_err(|e| self.refuse(format!("file {path:?}: bad base64: {e}")))?;
                    let mut rest = bytes.as_slice();
                    while !rest.is_empty() {
                        match gz.write(rest) {
                            // The decoder takes nothing once its gzip member has ended.
                            Ok(0) => {
                                return Err(self.refuse(format!(
                                    "file {path:?}: data follows the end of its gzip stream"
                                )));
                            }
                            Ok(n) => rest = &rest[n..],
                            Err(e) => return Err(self.content_err(&path, e)),
                        }
                    }
                }
                Step::Close(name) if name == "file" => break,
                _ => {
                    return Err(self.refuse(format!("file {path:?} may hold only <data> elements")));
                }
            }
        }
        if blocks == 0 {
            return Err(self.refuse(format!("file {path:?} holds no <data>")));
        }
        let sized = gz.finish().map_err(|e| self.content_err(&path, e))?;
        if sized.left != 0 {
            return Err(self.refuse(format!(
                "file {path:?} holds {} bytes, not the {size} it declares",
                size - sized.left
            )));
        }
        if Hash(*sized.hasher.finalize().as_bytes()) != blake3 {
            return Err(self.refuse(format!("file {path:?} does not match its blake3")));
        }
        sized
            .file
            .set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| sized.file.sync_all())
            .map_err(io_err("write", &target))
    }

    fn content_err(&self, path: &str, e: io::Error) -> PackageError {
        self.refuse(format!("file {path:?}: its content is refused: {e}"))
    }
}

/// The values of exactly these attributes, in this order: none missing, none other.
fn take_attrs(
    p: &Parser,
    element: &str,
    attrs: Vec<(String, String)>,
    wanted: &[&str],
) -> Result<Vec<String>, PackageError> {
    let mut out = vec![None; wanted.len()];
    for (key, value) in attrs {
        match wanted.iter().position(|w| *w == key) {
            Some(i) => out[i] = Some(value),
            None => return Err(p.refuse(format!("<{element}> has an unknown attribute {key:?}"))),
        }
    }
    out.into_iter()
        .zip(wanted)
        .map(|(v, w)| v.ok_or_else(|| p.refuse(format!("<{element}> lacks the attribute {w:?}"))))
        .collect()
}

/// The file being unpacked: refuses bytes past its declared size (a gzip bomb stops
/// there) and hashes what it writes.
struct Sized {
    file: File,
    left: u64,
    hasher: blake3::Hasher,
}

impl Write for Sized {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() as u64 > self.left {
            return Err(io::Error::other("it is longer than its declared size"));
        }
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.left -= data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests;
