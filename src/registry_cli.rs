//! `messs tenant|device|acl ...`: the registry on a stopped broker's data directory, until
//! the admin plane manages it on a running one. Every change is an audit record with actor
//! `cli`.

use std::io::Read;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use messs_broker::registry::{hex, Registry, RuleSpec};
use messs_broker::storage::registry::{AclAction, AclSubject, JwtKey};

/// `messs tenant ...`
#[derive(Subcommand)]
pub enum TenantCmd {
    /// Creates a tenant: a namespace of its own for topics, sessions and retained messages.
    Add {
        /// Its id: letters, digits, '-', '_', '.' (devices log in as NAME@ID).
        id: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists the tenants.
    List,
    /// Disables a tenant: its devices can no longer log in.
    Disable {
        /// The tenant.
        id: String,
    },
    /// Enables a disabled tenant.
    Enable {
        /// The tenant.
        id: String,
    },
    /// Whether a client certificate from the tenant's CAs whose name is not a device yet
    /// registers that device at its first login (`on`), or is refused (`off`, the
    /// default). Each registration is audited.
    CertAutoRegister {
        /// The tenant.
        id: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
    /// Overrides one of `[tenant_limits]` for this tenant (0: no limit), or with
    /// --unset goes back to the configuration's value.
    SetLimit {
        /// The tenant.
        id: String,
        /// max_connections, max_sessions, max_subscriptions, messages_per_sec,
        /// messages_burst, bytes_per_sec, bytes_burst, connects_per_sec, connects_burst,
        /// max_packet_size, max_retained_messages, max_retained_bytes or max_queued_bytes.
        name: String,
        /// The value (omit with --unset).
        value: Option<u64>,
        /// Remove the override.
        #[arg(long, conflicts_with = "value")]
        unset: bool,
    },
}

/// Where a device password comes from.
#[derive(Args)]
#[group(required = false, multiple = false)]
pub struct PasswordArg {
    /// The password (visible to other users in the process list: prefer --password-stdin).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArg {
    fn read(&self) -> anyhow::Result<Option<String>> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut line)
                .context("reading the password from standard input")?;
            let pw = line.lines().next().unwrap_or("").to_owned();
            if pw.is_empty() {
                bail!("no password on standard input");
            }
            return Ok(Some(pw));
        }
        Ok(self.password.clone())
    }
}

/// `messs device ...`
#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Adds a device to a tenant.
    Add {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArg,
        /// Client ids it may use: '*' matches anything, %u is the username (e.g. "%u-*").
        #[arg(long)]
        client_id_pattern: Option<String>,
        /// A group, for ACL rules that name groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Also let it log in with SCRAM-SHA-256 (MQTT 5 enhanced authentication): stores a
        /// PBKDF2 verifier of the password (auth.scram_iterations) beside its argon2 hash,
        /// which a stolen store can be attacked through faster (docs/SECURITY.md).
        #[arg(long)]
        scram: bool,
    },
    /// Lets a device log in with SCRAM-SHA-256 (sets its password and stores a verifier of
    /// it), or with --off stops it (the verifier is removed, the password stays).
    Scram {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArg,
        /// Remove the verifier instead.
        #[arg(long)]
        off: bool,
    },
    /// Adds many devices from a file of `username,password` lines; a password that is an
    /// argon2id PHC string (`$argon2id$...`, e.g. from another system) is stored as the
    /// hash. Blank lines and lines starting with # are skipped.
    Import {
        /// Their tenant.
        #[arg(long)]
        tenant: String,
        /// The file.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Prints the argon2id PHC hash of a password read from standard input (for `import`).
    HashPassword,
    /// Lists a tenant's devices.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Disables a device: it can no longer log in.
    Disable {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
    },
    /// Enables a disabled device.
    Enable {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
    },
    /// Sets a device's password.
    SetPassword {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Overrides one of the per-connection rate limits ([rate_limits]) for a device (on
    /// a stopped broker: from its next login); --unset goes back to the configuration's.
    SetLimit {
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Its username.
        #[arg(long)]
        username: String,
        /// messages_per_sec, messages_burst, bytes_per_sec, bytes_burst or
        /// disconnect_multiple.
        name: String,
        /// The value (omit with --unset).
        value: Option<u64>,
        /// Remove the override.
        #[arg(long, conflicts_with = "value")]
        unset: bool,
    },
}

/// What a rule governs, on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum ActionArg {
    /// PUBLISH and wills.
    Publish,
    /// SUBSCRIBE and deliveries.
    Subscribe,
    /// Both.
    Both,
}

/// `messs acl ...`
#[derive(Subcommand)]
pub enum AclCmd {
    /// Adds a rule. The first rule that matches decides; no match means deny.
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Allow what the rule matches.
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        allow: bool,
        /// Deny what the rule matches.
        #[arg(long)]
        deny: bool,
        /// What it governs.
        #[arg(long, value_enum, default_value = "both")]
        action: ActionArg,
        /// Topic filter; %c is the client id, %u the username (e.g. "devices/%c/#").
        #[arg(long)]
        topic: String,
        /// Only for this username.
        #[arg(long, conflicts_with_all = ["group", "anonymous"])]
        user: Option<String>,
        /// Only for devices in this group.
        #[arg(long, conflicts_with = "anonymous")]
        group: Option<String>,
        /// Only for anonymous clients.
        #[arg(long)]
        anonymous: bool,
        /// Only for these QoS levels (e.g. "0,1"); default all.
        #[arg(long, value_delimiter = ',')]
        qos: Vec<u8>,
        /// Only for messages with this retain flag.
        #[arg(long)]
        retain: Option<bool>,
        /// Insert at this position (0 = first); default last.
        #[arg(long)]
        position: Option<usize>,
    },
    /// Lists a tenant's rules in order.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Removes a rule by id.
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The rule's id (see `acl list`).
        id: u32,
    },
}

/// `messs jwt-key ...`
#[derive(Subcommand)]
pub enum JwtKeyCmd {
    /// Adds (or replaces) a key a tenant signs device tokens with. Devices send the token
    /// as their MQTT password; its header's kid picks the key.
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The key id tokens name in their `kid` header.
        #[arg(long)]
        kid: String,
        /// HS256, RS256, ES256 or EdDSA.
        #[arg(long)]
        alg: String,
        /// The HMAC secret (HS256, the file's bytes) or the public key (PEM).
        #[arg(long)]
        key_file: std::path::PathBuf,
    },
    /// Lists a tenant's keys (ids and algorithms, never the keys).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Removes a key.
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The key id.
        #[arg(long)]
        kid: String,
    },
}

/// `messs ca ...` and `messs cert ...`
#[derive(Subcommand)]
pub enum CaCmd {
    /// Trusts the CA certificate(s) of a PEM file for a tenant's device certificates: a
    /// device whose certificate one of them issued logs in to this tenant on a TLS
    /// listener, named by the certificate's CN (or a SAN, see the listener's
    /// cert_identity).
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// PEM file with the CA certificate(s).
        #[arg(long)]
        cert_file: std::path::PathBuf,
    },
    /// Stops trusting a CA: its device certificates no longer log in (connections already
    /// open stay until they end or are kicked).
    Remove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The CA's SHA-256 fingerprint, as `messs ca list` shows it.
        #[arg(long)]
        fingerprint: String,
    },
    /// Lists a tenant's trusted CAs and revoked certificates (SHA-256 fingerprints).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Revokes the device certificate(s) of a PEM file: they can no longer log in.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// PEM file with the device certificate(s).
        #[arg(long)]
        cert_file: std::path::PathBuf,
    },
}

/// The registry commands.
pub enum RegistryCmd {
    Tenant(TenantCmd),
    Device(DeviceCmd),
    Acl(AclCmd),
    JwtKey(JwtKeyCmd),
    Ca(CaCmd),
}

/// Runs one registry command; blocking.
pub fn run(registry: &mut Registry<'_>, cmd: RegistryCmd) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Tenant(c) => tenant(registry, c),
        RegistryCmd::Device(c) => device(registry, c),
        RegistryCmd::Acl(c) => acl(registry, c),
        RegistryCmd::JwtKey(c) => jwt_key(registry, c),
        RegistryCmd::Ca(c) => ca(registry, c),
    }
}

fn jwt_key(r: &mut Registry<'_>, cmd: JwtKeyCmd) -> anyhow::Result<()> {
    match cmd {
        JwtKeyCmd::Add {
            tenant,
            kid,
            alg,
            key_file,
        } => {
            let key = std::fs::read(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            r.put_jwt_key(
                &tenant,
                JwtKey {
                    kid: kid.clone(),
                    alg,
                    key,
                },
            )?;
            println!("key {kid} added to tenant {tenant}");
        }
        JwtKeyCmd::List { tenant } => {
            for k in r.jwt_keys(&tenant)? {
                println!("{}\t{}", k.kid, k.alg);
            }
        }
        JwtKeyCmd::Remove { tenant, kid } => {
            if !r.remove_jwt_key(&tenant, &kid)? {
                bail!("tenant {tenant} has no key {kid}");
            }
            println!("key {kid} removed");
        }
    }
    Ok(())
}

fn ca(r: &mut Registry<'_>, cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Add { tenant, cert_file } => {
            for der in messs_broker::read_pem_certs(&cert_file)? {
                let fp = r.add_ca(&tenant, &der)?;
                println!("CA {} trusted by tenant {tenant}", hex(&fp));
            }
        }
        CaCmd::Remove {
            tenant,
            fingerprint,
        } => {
            let fp = unhex32(&fingerprint).with_context(|| {
                format!("--fingerprint {fingerprint:?}: 64 hex digits, as `messs ca list` shows")
            })?;
            if !r.remove_ca(&tenant, &fp)? {
                bail!("tenant {tenant} trusts no CA {}", hex(&fp));
            }
            println!("CA {} no longer trusted by tenant {tenant}", hex(&fp));
        }
        CaCmd::List { tenant } => {
            for ca in r.cas(&tenant)? {
                println!("trusted CA\t{}", hex(&ca.fingerprint));
            }
            for fp in r.revoked(&tenant)? {
                println!("revoked\t{}", hex(&fp));
            }
        }
        CaCmd::Revoke { tenant, cert_file } => {
            for der in messs_broker::read_pem_certs(&cert_file)? {
                let fp = r.revoke_cert(&tenant, &der)?;
                println!("certificate {} revoked in tenant {tenant}", hex(&fp));
            }
        }
    }
    Ok(())
}

fn tenant(r: &mut Registry<'_>, cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Add { id, name } => {
            r.add_tenant(&id, name.as_deref())?;
            println!("tenant {id} added");
        }
        TenantCmd::List => {
            for t in r.tenants()? {
                let status = if t.enabled { "enabled" } else { "disabled" };
                let limits: Vec<String> =
                    t.limits.iter().map(|(n, v)| format!("{n}={v}")).collect();
                println!("{}\t{}\t{status}\t{}", t.id, t.name, limits.join(","));
            }
        }
        TenantCmd::SetLimit {
            id,
            name,
            value,
            unset,
        } => {
            let value = limit_value(value, unset)?;
            r.set_tenant_limit(&id, &name, value)?;
            match value {
                Some(v) => println!("tenant {id}: {name} = {v}"),
                None => println!("tenant {id}: {name} back to the configuration's"),
            }
        }
        TenantCmd::Disable { id } => {
            r.set_tenant_enabled(&id, false)?;
            println!("tenant {id} disabled");
        }
        TenantCmd::Enable { id } => {
            r.set_tenant_enabled(&id, true)?;
            println!("tenant {id} enabled");
        }
        TenantCmd::CertAutoRegister { id, setting } => {
            r.set_cert_auto_register(&id, setting == "on")?;
            println!("tenant {id}: certificate auto-registration {setting}");
        }
    }
    Ok(())
}

/// A `set-limit` value: a number, or `None` with `--unset`.
fn limit_value(value: Option<u64>, unset: bool) -> anyhow::Result<Option<u64>> {
    match (value, unset) {
        (Some(v), false) => Ok(Some(v)),
        (None, true) => Ok(None),
        _ => anyhow::bail!("give a value, or --unset"),
    }
}

fn device(r: &mut Registry<'_>, cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::SetLimit {
            tenant,
            username,
            name,
            value,
            unset,
        } => {
            let value = limit_value(value, unset)?;
            r.set_device_limit(&tenant, &username, &name, value)?;
            match value {
                Some(v) => println!("device {username} of {tenant}: {name} = {v}"),
                None => {
                    println!("device {username} of {tenant}: {name} back to the configuration's")
                }
            }
        }
        DeviceCmd::Add {
            tenant,
            username,
            password,
            client_id_pattern,
            groups,
            scram,
        } => {
            let pw = password.read()?;
            if scram && pw.is_none() {
                bail!("--scram needs the password (--password or --password-stdin)");
            }
            r.add_device(
                &tenant,
                &username,
                pw.as_deref(),
                client_id_pattern.as_deref(),
                &groups,
            )?;
            if scram {
                r.set_device_scram(&tenant, &username, pw.as_deref())?;
            }
            println!("device {username} added to tenant {tenant}");
        }
        DeviceCmd::Scram {
            tenant,
            username,
            password,
            off,
        } => {
            let pw = password.read()?;
            match (pw, off) {
                (Some(_), true) => bail!("--off takes no password"),
                (None, false) => bail!("give --password or --password-stdin (or --off)"),
                (pw, _) => r.set_device_scram(&tenant, &username, pw.as_deref())?,
            }
            let state = if off { "off" } else { "on" };
            println!("SCRAM for device {username}: {state}");
        }
        DeviceCmd::Import { tenant, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut added = 0;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((user, secret)) = line.split_once(',') else {
                    bail!("{}:{}: expected username,password", file.display(), n + 1);
                };
                r.import_device(&tenant, user.trim(), secret.trim())
                    .with_context(|| format!("{}:{}", file.display(), n + 1))?;
                added += 1;
            }
            println!("{added} devices added to tenant {tenant}");
        }
        DeviceCmd::HashPassword => {
            let pw = PasswordArg {
                password: None,
                password_stdin: true,
            }
            .read()?
            .unwrap_or_default();
            println!("{}", r.hash(&pw)?);
        }
        DeviceCmd::List { tenant } => {
            let mut after: Option<String> = None;
            loop {
                let page = r.devices(&tenant, after.as_deref(), 1000)?;
                let Some(last) = page.last() else { break };
                after = Some(last.username.clone());
                for d in &page {
                    println!(
                        "{}\t{}\tpassword: {}{}\tclient ids: {}\tgroups: {}",
                        d.username,
                        if d.enabled { "enabled" } else { "disabled" },
                        if d.password_hash.is_some() {
                            "set"
                        } else {
                            "none"
                        },
                        if d.scram.is_some() { " (+SCRAM)" } else { "" },
                        d.client_id_pattern.as_deref().unwrap_or("*"),
                        d.groups.join(",")
                    );
                }
            }
        }
        DeviceCmd::Disable { tenant, username } => {
            r.set_device_enabled(&tenant, &username, false)?;
            println!("device {username} disabled");
        }
        DeviceCmd::Enable { tenant, username } => {
            r.set_device_enabled(&tenant, &username, true)?;
            println!("device {username} enabled");
        }
        DeviceCmd::SetPassword {
            tenant,
            username,
            password,
        } => {
            let Some(pw) = password.read()? else {
                bail!("give --password or --password-stdin");
            };
            r.set_device_password(&tenant, &username, Some(&pw))?;
            println!("password of device {username} set");
        }
    }
    Ok(())
}

fn acl(r: &mut Registry<'_>, cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Add {
            tenant,
            allow,
            deny: _,
            action,
            topic,
            user,
            group,
            anonymous,
            qos,
            retain,
            position,
        } => {
            let mut qos_mask = 0u8;
            for q in &qos {
                if *q > 2 {
                    bail!("--qos takes 0, 1 and 2");
                }
                qos_mask |= 1 << q;
            }
            let subject = match (user, group, anonymous) {
                (Some(u), _, _) => AclSubject::User(u),
                (_, Some(g), _) => AclSubject::Group(g),
                (_, _, true) => AclSubject::Anonymous,
                _ => AclSubject::All,
            };
            let action = match action {
                ActionArg::Publish => AclAction::Publish,
                ActionArg::Subscribe => AclAction::Subscribe,
                ActionArg::Both => AclAction::Both,
            };
            let spec = RuleSpec {
                allow,
                action,
                filter: topic,
                subject,
                qos_mask: if qos.is_empty() { 7 } else { qos_mask },
                retain,
            };
            let id = r.add_rule(&tenant, spec, position)?;
            println!("rule {id} added");
        }
        AclCmd::List { tenant } => {
            for rule in r.rules(&tenant)? {
                let qos: Vec<String> = (0..3)
                    .filter(|q| rule.qos_mask & (1 << q) != 0)
                    .map(|q| q.to_string())
                    .collect();
                println!(
                    "{}\t{}\t{:?}\t{}\tfor {:?}\tqos {}{}",
                    rule.id,
                    if rule.allow { "allow" } else { "deny" },
                    rule.action,
                    rule.filter,
                    rule.subject,
                    qos.join(","),
                    rule.retain
                        .map(|r| format!("\tretain {r}"))
                        .unwrap_or_default()
                );
            }
        }
        AclCmd::Remove { tenant, id } => {
            if !r.remove_rule(&tenant, id)? {
                bail!("tenant {tenant} has no rule {id}");
            }
            println!("rule {id} removed");
        }
    }
    Ok(())
}

/// 32 bytes from 64 hex digits (either case); `None` for anything else.
fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
