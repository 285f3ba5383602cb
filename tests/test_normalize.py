from oncocoder.index.normalize import expand, lexical_form, load_abbreviations, query_variants


def test_abbreviation_table_is_well_formed():
    table = load_abbreviations()
    assert len(table.rows) > 200
    assert len({r.abbreviation for r in table.rows}) == len(table.rows)
    assert all(r.expansion and r.category in {"laterality", "location", "histology", "entity", "status", "general"}
               for r in table.rows)


def test_expand_writes_out_abbreviations_and_drops_laterality():
    assert expand("Mamma-Ca li. oben außen") == "Mamma-Karzinom oben außen"
    assert expand("Bronchial-Ca re.") == "Bronchial-Karzinom"
    assert expand("Z. n. Prostata-Ca") == "Zustand nach Prostata-Karzinom"
    assert "nichtkleinzelliges Bronchialkarzinom" in expand("NSCLC")
    assert expand("Li-Fraumeni-Syndrom") == "Li-Fraumeni-Syndrom"  # "Li" is not "li."
    assert expand("Magenkarzinom") == "Magenkarzinom"


def test_query_variants_follow_the_history_convention():
    assert query_variants(expand("Z.n. Prostatakarzinom")) == ["Prostatakarzinom in der Eigenanamnese"]
    assert query_variants(expand("Prostatakarzinom")) == []


def test_lexical_form():
    assert lexical_form("Mamma-Karzinom, Größe 2 cm") == "mamma karzinom groesse 2 cm mammakarzinom"
