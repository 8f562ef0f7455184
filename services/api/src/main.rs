use std::path::PathBuf;

use anyhow::Context;
use api::Config;
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// paperstream's web UI, JSON API and admin pages.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; the environment overrides it.
    #[arg(long, env = "PAPERSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the web UI and the API (the default).
    Serve,
    /// Create an account, for the first administrator or a demo user. The
    /// password comes from the environment, never the command line.
    CreateUser {
        #[arg(long)]
        email: String,
        /// The variable holding the password.
        #[arg(long, default_value = api::USER_PASSWORD_ENV)]
        password_env: String,
        #[arg(long)]
        admin: bool,
        /// Succeed without change when the account exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Show or change the runtime settings, as the admin page does.
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
}

#[derive(Debug, Subcommand)]
enum SettingsAction {
    /// Print the latest version, its settings and the instances as JSON.
    Show,
    /// Store FILE (JSON, the shape `show` prints under "settings") as a new
    /// version and announce it.
    Set {
        file: PathBuf,
        /// Who makes the change.
        #[arg(long)]
        author: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Refuse unless this is still the latest version.
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Make an earlier version's settings current again.
    Rollback {
        version: i64,
        #[arg(long)]
        author: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ops::init_logging();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            tracing::info!(?config, "api starting");
            let shutdown = ops::shutdown_on_signal();
            let metrics = ops::init_metrics()?;
            let state = api::AppState::connect(&config).await?;
            let checks = vec![
                (
                    "postgres",
                    ops::check_with(state.pool.clone(), catalog::ping),
                ),
                (
                    "redis",
                    ops::check_with(state.client.clone(), streams::StreamsClient::ping),
                ),
            ];
            ops::serve(config.ops_addr, metrics, checks, shutdown.clone()).await?;
            let watcher = api::watch_settings(&state, &config).await?;
            let watching = tokio::spawn(watcher.run(shutdown.clone()));
            api::serve(state, config.listen, shutdown, |_| {}).await?;
            watching.await??;
        }
        Command::Settings { action } => {
            let state = api::AppState::connect(&config).await?;
            settings_command(&state, action).await?;
        }
        Command::CreateUser {
            email,
            password_env,
            admin,
            if_missing,
        } => {
            let password = std::env::var(&password_env)
                .with_context(|| format!("set {password_env} to the password"))?;
            let state = api::AppState::connect(&config).await?;
            let new_user =
                accounts::NewUser::parse(&email, &password, "UTC").map_err(|errors| {
                    anyhow::anyhow!(
                        "{}",
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })?;
            let role = if admin {
                accounts::Role::Admin
            } else {
                accounts::Role::User
            };
            match api::web::auth::create_account(&state, &new_user, role).await {
                Ok(user) => println!("created {} (id {}, {:?})", user.email, user.id, user.role),
                Err(api::Error::Accounts(accounts::Error::EmailTaken)) if if_missing => {
                    println!("{email} exists; left as it is");
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

async fn settings_command(state: &api::AppState, action: SettingsAction) -> anyhow::Result<()> {
    let version = match action {
        SettingsAction::Show => {
            let overview = api::runtime_settings::overview(state).await?;
            println!("{}", serde_json::to_string_pretty(&overview)?);
            return Ok(());
        }
        SettingsAction::Set {
            file,
            author,
            reason,
            expected_version,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let document: settings::Settings = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a settings document", file.display()))?;
            api::runtime_settings::change(
                state,
                settings::store::Change {
                    settings: &document,
                    author: &author,
                    reason: &reason,
                    expected_version,
                },
            )
            .await?
        }
        SettingsAction::Rollback {
            version,
            author,
            reason,
        } => api::runtime_settings::rollback(state, version, &author, &reason).await?,
    };
    println!("version {version} stored and announced");
    Ok(())
}
