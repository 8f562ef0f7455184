//! Every recorded and hand-written fixture parses into what it says.

use std::{collections::BTreeSet, path::PathBuf};

use arxiv::{ParseError, announce, oai, query};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn query_fixture(prefix: &str) -> query::QueryPage {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arxiv-api");
    let name = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no fixture {prefix}*"));
    query::parse(&fixture(&format!("arxiv-api/{name}"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_recorded_query_response_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arxiv-api");
    let index = fixture("arxiv-api/INDEX.tsv");
    let mut checked = 0;
    for line in index.lines() {
        let mut cols = line.split('\t');
        let (Some(file), Some(status)) = (cols.next(), cols.next()) else {
            continue;
        };
        let xml = std::fs::read_to_string(dir.join(file)).expect("fixture");
        match query::parse(&xml) {
            Ok(page) => {
                assert_eq!(status, "200", "{file} parsed but was an HTTP {status}");
                for paper in &page.papers {
                    assert!(
                        !paper.title.is_empty() && !paper.abstract_text.is_empty(),
                        "{file}: {paper:?}"
                    );
                    assert!(
                        !paper.authors.is_empty() && !paper.categories.is_empty(),
                        "{file}"
                    );
                    assert_eq!(paper.categories[0], paper.primary_category);
                    assert!(
                        paper.version.is_some()
                            && paper.published.is_some()
                            && paper.updated.is_some()
                    );
                    assert!(
                        !paper.title.contains("  ") && !paper.title.contains('\n'),
                        "{file}: {:?}",
                        paper.title
                    );
                    assert!(
                        !paper.abstract_text.contains('\n')
                            && !paper.abstract_text.starts_with(' ')
                    );
                }
            }
            Err(ParseError::Api { message }) => {
                assert_eq!(status, "400", "{file}: {message}");
            }
            Err(other) => panic!("{file}: {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 20);
}

#[test]
fn the_paper_titled_zero() {
    let page = query_fixture("id_2104.12255v1_");
    let paper = &page.papers[0];
    assert_eq!(paper.title, "0");
    assert_eq!(paper.id.as_str(), "2104.12255");
    assert_eq!(paper.version, Some(1));
    assert_eq!(paper.primary_category, "cs.CR");
    assert_eq!(paper.authors[0].name, "Quan Thoi Minh Nguyen");
    assert_eq!(
        paper.pdf_url.as_deref(),
        Some("https://arxiv.org/pdf/2104.12255v1")
    );
    assert_eq!(paper.abs_url, "https://arxiv.org/abs/2104.12255v1");
    assert_eq!(
        paper.published.map(|t| t.unix_timestamp()),
        Some(1_618_934_834)
    );
    assert!(
        paper
            .abstract_text
            .starts_with("What is the funniest number in cryptography? 0.")
    );
}

#[test]
fn old_style_ids_with_affiliations_and_journal_ref() {
    let paper = &query_fixture("id_astro-ph_0601001_").papers[0];
    assert_eq!(paper.id.as_str(), "astro-ph/0601001");
    assert!(paper.id.is_old_style());
    assert_eq!(paper.version, Some(1));
    assert_eq!(
        paper.journal_ref.as_deref(),
        Some("ActaAstron.56:1-50,2006")
    );
    let affiliations: Vec<(&str, &str)> = paper
        .authors
        .iter()
        .map(|a| (a.name.as_str(), a.affiliations[0].as_str()))
        .collect();
    assert_eq!(
        affiliations,
        [
            ("Andrew Gould", "Ohio State"),
            ("Susan Dorsher", "Ohio State"),
            ("B. Scott Gaudi", "CfA"),
            ("Andrzej Udalski", "Warsaw University Observatory")
        ]
    );
    assert!(
        paper
            .comment
            .as_deref()
            .is_some_and(|c| c.starts_with("62 pages"))
    );
    // The raw abstract starts with two spaces.
    assert!(paper.abstract_text.starts_with("We derive the frequencies"));
    let versioned = &query_fixture("id_quant-ph_0201082v1_").papers[0];
    assert_eq!(
        (versioned.id.as_str(), versioned.version),
        ("quant-ph/0201082", Some(1))
    );
}

#[test]
fn errors_and_empty_results() {
    match query::parse(&fixture("arxiv-api/id_abc_s0_m100_b79c8dcf6bc3.xml")) {
        Err(ParseError::Api { message }) => assert_eq!(message, "incorrect id format for abc"),
        other => panic!("expected the API error, got {other:?}"),
    }
    let empty = query_fixture("id_0000.0000_");
    assert_eq!((empty.total_results, empty.papers.len()), (0, 0));
    // An id that does not exist is an empty result too, not an error.
    assert!(query_fixture("id_0808.05394_s0").papers.is_empty());
    // Asked for two, one exists.
    assert_eq!(query_fixture("id_0808.05394_1707.08567_").papers.len(), 1);
}

#[test]
fn dois_categories_and_paging_fields() {
    let page = query_fixture("q_testing_s0_m100_");
    assert_eq!(
        (page.start_index, page.items_per_page, page.papers.len()),
        (0, 100, 100)
    );
    assert!(page.total_results > 100);
    let with_doi = page.papers.iter().filter(|p| p.doi.is_some()).count();
    assert!(with_doi > 0);
    assert!(
        page.papers
            .iter()
            .all(|p| p.doi.as_deref().is_none_or(|d| d.starts_with("10.")))
    );
    let cross_listed = page
        .papers
        .iter()
        .filter(|p| p.categories.len() > 1)
        .count();
    assert!(cross_listed > 0);
    let affiliated = page
        .papers
        .iter()
        .flat_map(|p| &p.authors)
        .filter(|a| !a.affiliations.is_empty())
        .count();
    assert!(affiliated > 0);
}

/// The paging series of `search_query=testing` in pages of 10 from 0 to 59
/// yields every entry once; overlapping pages agree on what they share.
#[test]
fn paging_collects_every_entry_exactly_once() {
    let mut seen = Vec::new();
    for start in [0, 10, 20, 30, 40, 50] {
        let page = query_fixture(&format!("q_testing_s{start}_m10_"));
        assert_eq!(page.start_index, start);
        seen.extend(page.papers.into_iter().map(|p| p.id));
    }
    let distinct: BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no entry twice");
    assert_eq!(seen.len(), 60);
    let first_hundred: Vec<_> = query_fixture("q_testing_s0_m100_")
        .papers
        .into_iter()
        .map(|p| p.id)
        .collect();
    let overlap = seen.iter().filter(|id| first_hundred.contains(id)).count();
    assert!(
        overlap >= 50,
        "pages of 10 and the page of 100 list mostly the same papers ({overlap} of 60)"
    );
}

#[test]
fn oai_pages_in_the_arxiv_format() {
    let first = oai::parse(&fixture("oai_arxiv_page1.xml")).expect("page 1");
    let resumption = first.resumption.as_ref().expect("a resumption token");
    assert!(!resumption.token.is_empty());
    assert_eq!(resumption.complete_list_size, Some(5));
    assert_eq!(first.records.len(), 3);
    let papers: Vec<_> = first
        .records
        .iter()
        .filter_map(|r| r.paper.as_ref())
        .collect();
    assert_eq!(papers.len(), 3);
    assert!(papers.iter().any(|p| p.id.is_old_style()));
    assert!(papers.iter().any(|p| p.categories.len() > 1));
    assert!(papers.iter().any(|p| p.doi.is_some()));
    assert!(
        papers
            .iter()
            .flat_map(|p| &p.authors)
            .any(|a| a.affiliations.len() >= 2)
    );
    assert!(
        papers
            .iter()
            .all(|p| p.version.is_none() && p.published.is_some())
    );
    assert!(
        papers
            .iter()
            .all(|p| !p.title.contains("  ") && !p.title.contains('\n'))
    );
    let second = oai::parse(&fixture("oai_arxiv_page2.xml")).expect("page 2");
    assert!(second.resumption.is_none(), "an empty token ends the list");
    assert_eq!(second.records.len(), 2);
    assert_eq!(
        second.records.iter().filter(|r| r.paper.is_none()).count(),
        1,
        "one deleted record"
    );
}

#[test]
fn oai_pages_in_the_arxivraw_format() {
    let first = oai::parse(&fixture("oai_arxivraw_page1.xml")).expect("page 1");
    assert!(first.resumption.is_some());
    let papers: Vec<_> = first
        .records
        .iter()
        .filter_map(|r| r.paper.as_ref())
        .collect();
    assert_eq!(papers.len(), 2);
    let revised = papers
        .iter()
        .find(|p| p.version == Some(2))
        .expect("a paper with two versions");
    assert!(revised.published < revised.updated, "v1 before v2");
    assert!(papers.iter().all(|p| !p.authors.is_empty()));
    let second = oai::parse(&fixture("oai_arxivraw_page2.xml")).expect("page 2");
    assert!(second.resumption.is_none());
    assert_eq!(second.records.len(), 1);
}

#[test]
fn oai_errors() {
    let empty =
        oai::parse(&fixture("oai_no_records.xml")).expect("noRecordsMatch is an empty window");
    assert!(empty.records.is_empty() && empty.resumption.is_none());
    match oai::parse(&fixture("oai_bad_resumption_token.xml")) {
        Err(ParseError::Oai { code, .. }) => assert_eq!(code, "badResumptionToken"),
        other => panic!("expected an OAI error, got {other:?}"),
    }
}

#[test]
fn announcement_feeds() {
    let announced = announce::parse(&fixture("rss_cs_lg_ai.xml")).expect("feed");
    assert_eq!(announced.len(), 5);
    let kinds: BTreeSet<_> = announced.iter().map(|a| format!("{:?}", a.kind)).collect();
    assert_eq!(
        kinds.len(),
        4,
        "new, cross, replace and replace-cross: {kinds:?}"
    );
    for a in &announced {
        assert!(a.paper.version.is_some());
        assert!(
            !a.paper.abstract_text.contains("Announce Type"),
            "{}",
            a.paper.abstract_text
        );
        assert!(!a.paper.authors.is_empty());
    }
    let replaced = announced
        .iter()
        .find(|a| a.kind == announce::AnnounceType::Replace)
        .expect("a replacement");
    assert!(replaced.paper.version.is_some_and(|v| v >= 2));
    assert!(
        announced
            .iter()
            .any(|a| a.paper.title.contains('&') || a.paper.abstract_text.contains('<'))
    );
    assert!(
        announce::parse(&fixture("rss_weekend_empty.xml"))
            .expect("empty feed")
            .is_empty()
    );
}

#[test]
fn malformed_xml_is_an_error_not_a_panic() {
    let good = fixture("arxiv-api/q_testing_s0_m10_bc5a6c384fe9.xml");
    for cut in [0, 1, 10, 100, 500, good.len() / 2, good.len() - 10] {
        let truncated = &good[..cut];
        assert!(
            query::parse(truncated).is_err(),
            "truncated at {cut} parsed"
        );
        let _ = oai::parse(truncated);
        let _ = announce::parse(truncated);
    }
    for junk in [
        "<feed><entry><id>",
        "not xml at all",
        "<feed></entry>",
        "<?xml version='1.0'?><OAI-PMH><ListRecords><record>",
    ] {
        assert!(
            query::parse(junk).is_err() || query::parse(junk).is_ok_and(|p| p.papers.is_empty())
        );
        let _ = oai::parse(junk);
        let _ = announce::parse(junk);
    }
    let bad_id = good.replacen("http://arxiv.org/abs/", "http://arxiv.org/abs/nonsense", 1);
    assert!(matches!(
        query::parse(&bad_id),
        Err(ParseError::Invalid { .. })
    ));
}
